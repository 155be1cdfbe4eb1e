"""CIDEr-D in process, per caption, for use as a training reward (self-critical training).

:class:`CiderD` gives the numbers pycocoevalcap's ``CiderScorer`` gives (n-grams 1..4, tf-idf
vectors, hypothesis counts clipped to the reference, Gaussian length penalty with sigma 6, mean
over references and n-gram orders, x10) with two differences of use, not of formula:

- the document frequencies come from a fixed corpus given once (the training references),
  where ``Cider().compute_score`` recomputes them from the images it is handed; scored with the
  corpus it was built from, the two agree;
- the work is vectorised over the batch with numpy, and the reference side (n-gram columns,
  tf-idf values, norms, lengths) is cached per tuple of reference strings, so the several
  samples SCST draws per image cost one reference lookup.

Captions are expected already tokenised: words separated by white space, as pycocoevalcap's
``precook`` splits them (``str.split()``). Nothing here imports pycocoevalcap.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import chain, repeat

import numpy as np

__all__ = ["CiderD"]

_Ngram = tuple[str, ...]


def _ngrams(words: list[str], n: int) -> Iterator[_Ngram]:
    """Every 1..n-gram of ``words`` in pycocoevalcap's order (by size, then by position)."""
    # zip stops at the shortest slice; chained iterators keep the loop in C (this is the hot
    # path of scoring).
    return chain.from_iterable(
        zip(*[words[j:] for j in range(k)], strict=False) for k in range(1, n + 1)
    )


def _length(words: list[str], n: int) -> int:
    # pycocoevalcap's counts2vec adds term frequencies to the length "if n == 1" after reusing n
    # as the 0-based n-gram order, so the length it compares is the number of bigrams (and 0
    # for all captions when n == 1: no penalty). For non-empty captions that is the word count
    # minus one on both sides, the same difference; an empty caption has zero-norm vectors and
    # scores 0 whatever the penalty.
    return max(len(words) - 1, 0) if n >= 2 else 0


@dataclass(frozen=True)
class _RefGroup:
    """The references of one image over the union of their n-grams (V_g columns, sorted)."""

    cols: np.ndarray  # (V_g,) int64: index columns of the n-grams, ascending
    vec: np.ndarray  # (V_g, K) float64: term frequency x idf of each n-gram in each reference
    norm: np.ndarray  # (K, n) float64: L2 norm of each reference's vector per n-gram order
    length: np.ndarray  # (K,) float64: see _length

    @property
    def size(self) -> int:
        return len(self.length)


class CiderD:
    """CIDEr-D of tokenised captions against their references, with idf from a fixed corpus.

    Args:
        corpus: for each image of the reference corpus (e.g. the training set), its reference
            captions, tokenised (words separated by spaces). An n-gram counts once per image,
            over the union of that image's references; ``log(len(corpus))`` is the log
            reference length, as in pycocoevalcap.
        n: longest n-gram. Only the default 4 has a pycocoevalcap counterpart: its
            ``CiderScorer`` counts up to 4-grams whatever its ``n``.
        sigma: standard deviation of the Gaussian length penalty.
        cache_size: how many reference lists (keyed by the tuple of their strings) keep their
            prepared vectors across calls, the oldest dropped first; 0 turns the cache off.
            One image with five references takes about 7 kB, so the default holds Flickr8k's
            training set in about 40 MB and caps the cache near 140 MB. Within one call a
            repeated reference list is prepared once whatever the cache.

    N-grams absent from the corpus get document frequency 0, and like pycocoevalcap's
    ``log(max(1, df))`` that gives them the same idf as an n-gram of a single image. References
    outside the corpus are allowed: their n-grams join the index with frequency 0.
    """

    def __init__(
        self,
        corpus: Sequence[Sequence[str]],
        n: int = 4,
        sigma: float = 6.0,
        cache_size: int = 20_000,
    ) -> None:
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if len(corpus) == 0:
            raise ValueError("the reference corpus is empty")
        _check_references(corpus, "corpus")
        self.n = n
        self.sigma = float(sigma)
        self.cache_size = cache_size
        df: Counter[_Ngram] = Counter()
        for refs in corpus:
            df.update({g for ref in refs for g in _ngrams(ref.split(), n)})
        self.num_images = len(corpus)
        self.ref_len = float(np.log(float(self.num_images)))
        self._index: dict[_Ngram, int] = {g: i for i, g in enumerate(df)}
        self._df = np.fromiter(df.values(), dtype=np.float64, count=len(df))  # (V,)
        self._idf = self.ref_len - np.log(np.maximum(1.0, self._df))  # (V,)
        self._groups: dict[tuple[str, ...], _RefGroup] = {}

    def document_frequency(self, ngram: str) -> int:
        """In how many corpus images' references ``ngram`` (space-separated words) occurs."""
        col = self._index.get(tuple(ngram.split()))
        return 0 if col is None else int(self._df[col])

    def scores(self, hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> np.ndarray:
        """CIDEr-D of ``hypotheses[i]`` against ``references[i]``, for every i: (N,) float64.

        The same reference list may come several times (several samples per image); an empty
        hypothesis scores 0.
        """
        if len(hypotheses) != len(references):
            raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference lists")
        _check_references(references, "references")
        N, n = len(hypotheses), self.n
        if N == 0:
            return np.zeros(0, dtype=np.float64)

        # Distinct reference lists (S) and hypotheses (H) of the batch; items point at them.
        slot_of: dict[tuple[str, ...], int] = {}
        item_slot = np.array([slot_of.setdefault(tuple(r), len(slot_of)) for r in references])
        hyp_of: dict[str, int] = {}
        item_hyp = np.array([hyp_of.setdefault(h, len(hyp_of)) for h in hypotheses])

        groups = [self._group(key) for key in slot_of]  # may grow the index: read V after
        V, S = len(self._index), len(groups)
        K = max(g.size for g in groups)
        # Batch reference table: one row per (slot, n-gram of the slot's references), keyed
        # slot * V + column, with a last sentinel row that no query matches. Keys come out
        # sorted because slots are in order and each group's columns are sorted.
        g_cols = [g.cols for g in groups]
        row_key = np.concatenate(
            [
                np.repeat(np.arange(S) * V, [len(c) for c in g_cols]) + np.concatenate(g_cols),
                [S * V],
            ]
        )
        table = np.zeros((len(row_key), K))  # (rows, K): zero where a reference lacks it
        ref_norm = np.zeros((S, K, n))
        ref_length = np.zeros((S, K))
        start = 0
        for s, g in enumerate(groups):
            table[start : start + len(g.cols), : g.size] = g.vec
            ref_norm[s, : g.size] = g.norm
            ref_length[s, : g.size] = g.length
            start += len(g.cols)
        num_refs = np.array([g.size for g in groups])[item_slot]  # (N,)

        # Hypothesis vectors; n-grams outside the index cannot meet a reference n-gram but
        # count in the norm.
        h_col, h_vec, h_order, h_count, h_length = self._cook(list(hyp_of), grow=False)
        h_owner = np.repeat(np.arange(len(hyp_of)), h_count)
        h_norm = _norms(h_owner, h_order, h_vec, len(hyp_of), n)  # (H, n)
        known = h_col >= 0
        k_col, k_vec, k_order = h_col[known], h_vec[known], h_order[known]
        k_count = np.bincount(h_owner[known], minlength=len(hyp_of))
        k_first = np.cumsum(k_count) - k_count

        # Queries: every known n-gram of each item's hypothesis, looked up among the n-grams
        # of that item's references, in the hypothesis' n-gram order.
        q_count = k_count[item_hyp]
        q_item = np.repeat(np.arange(N), q_count)
        q_first = np.cumsum(q_count) - q_count
        q_entry = np.arange(len(q_item)) - q_first[q_item] + k_first[item_hyp][q_item]
        q_key = item_slot[q_item] * V + k_col[q_entry]
        row = np.searchsorted(row_key, q_key)  # < len(row_key): the sentinel is larger
        ref_vec = np.where((row_key[row] == q_key)[:, None], table[row], 0.0)  # (Q, K)
        hyp_vec = k_vec[q_entry][:, None]
        clipped = np.minimum(hyp_vec, ref_vec) * ref_vec  # CIDEr-D: hypothesis counts clipped
        bins = (q_item[:, None] * K + np.arange(K)) * n + k_order[q_entry][:, None]
        val = np.bincount(bins.ravel(), weights=clipped.ravel(), minlength=N * K * n)
        val = val.astype(np.float64, copy=False).reshape(N, K, n)  # int64 when Q == 0

        # Cosine similarity where both norms are non-zero (val is 0 otherwise), then the
        # Gaussian length penalty; padded references (k >= num_refs) hold zeros throughout.
        norm_h, norm_r = h_norm[item_hyp][:, None, :], ref_norm[item_slot]
        val = np.divide(val, norm_h * norm_r, out=val, where=(norm_h != 0) & (norm_r != 0))
        delta = h_length[item_hyp][:, None] - ref_length[item_slot]  # (N, K)
        val *= np.power(np.e, -(delta**2) / (2 * self.sigma**2))[:, :, None]
        return val.sum(axis=1).mean(axis=1) / num_refs * 10.0

    def _cook(
        self, sentences: Sequence[str], grow: bool
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Flat n-gram entries of ``sentences``, each sentence's in pycocoevalcap's order:
        columns (E,) (-1 outside the index unless ``grow`` adds them with frequency 0),
        tf x idf (E,), 0-based orders (E,), entries per sentence (S,), lengths (S,)."""
        index = self._index
        cols: list[int] = []
        tfs: list[int] = []
        orders: list[int] = []
        count = np.empty(len(sentences), dtype=np.int64)
        length = np.empty(len(sentences), dtype=np.float64)
        for i, sentence in enumerate(sentences):
            words = sentence.split()
            counts = Counter(_ngrams(words, self.n))
            if grow:
                for g in counts:
                    index.setdefault(g, len(index))
            cols.extend(map(index.get, counts, repeat(-1)))
            tfs.extend(counts.values())
            orders.extend(map(len, counts))
            count[i] = len(counts)
            length[i] = _length(words, self.n)
        if len(index) > len(self._idf):
            extra = len(index) - len(self._idf)
            self._df = np.concatenate([self._df, np.zeros(extra)])
            self._idf = np.concatenate([self._idf, np.full(extra, self.ref_len)])
        col = np.array(cols, dtype=np.int64)
        idf = np.full(len(col), self.ref_len)  # outside the index: document frequency 0
        idf[col >= 0] = self._idf[col[col >= 0]]
        order = np.array(orders, dtype=np.int64) - 1
        return col, np.array(tfs, dtype=np.float64) * idf, order, count, length

    def _group(self, key: tuple[str, ...]) -> _RefGroup:
        group = self._groups.get(key)
        if group is not None:
            return group
        col, vec, order, count, length = self._cook(key, grow=True)
        ref = np.repeat(np.arange(len(key)), count)
        norm = _norms(ref, order, vec, len(key), self.n)
        cols, inverse = np.unique(col, return_inverse=True)
        table = np.zeros((len(cols), len(key)))
        table[inverse, ref] = vec  # a reference lists each of its n-grams once
        group = _RefGroup(cols, table, norm, length)
        if self.cache_size > 0:
            if len(self._groups) >= self.cache_size:
                del self._groups[next(iter(self._groups))]  # the oldest
            self._groups[key] = group
        return group


def _norms(owner: np.ndarray, order: np.ndarray, vec: np.ndarray, rows: int, n: int) -> np.ndarray:
    """L2 norm per (owner, n-gram order): (rows, n). Summed in entry order, as pycocoevalcap."""
    squares = np.bincount(owner * n + order, weights=vec**2, minlength=rows * n)
    return np.sqrt(squares).reshape(rows, n)


def _check_references(references: Sequence[Sequence[str]], what: str) -> None:
    for i, refs in enumerate(references):
        if isinstance(refs, str) or len(refs) == 0:
            raise ValueError(f"{what}[{i}]: expected a non-empty list of reference strings")
