"""The CIDEr-D reward of self-critical training, usable on its own: token-id captions in,
one reward per caption out.

:class:`CiderDReward` holds what the reward needs once: the vocabulary's words (ids -> words)
and CIDEr-D's document frequencies from a reference corpus (the training references,
:class:`imgcap.metrics.cider_d.CiderD`). References and captions are compared as the vocabulary
sees them (``normalize``: lower case, no punctuation). :class:`~imgcap.objectives.scst.SelfCritical`
calls it on every batch; a reranker, an evaluation of samples or a new objective can call it
the same way.

Example::

    >>> words = ["<pad>", "<start>", "<end>", "<unk>", "a", "red", "blue", "circle"]
    >>> reward = CiderDReward(words, [["A red circle."], ["a blue circle"]])
    >>> reward([[4, 5, 7, 2], [4, 6, 7, 2]], [["a red circle"], ["a red circle"]])
    tensor([7.5000, 0.0000])

(The first caption is its reference; the second shares with it only ``a`` and ``circle``,
which every corpus image has, so they weigh nothing. tests/objectives/test_reward.py runs
this example.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from imgcap.tokens import END_ID, PAD_ID, START_ID
from imgcap.vocab import normalize_caption


class CiderDReward:
    """CIDEr-D of captions given as token ids against raw reference captions.

    Args:
        words: the vocabulary in id order (ids -> words).
        corpus: for each image of the reference corpus (the training set), its raw reference
            captions; CIDEr-D's document frequencies come from them, once.
        normalize: caption string -> its words, as the vocabulary was built.
    """

    def __init__(
        self,
        words: Sequence[str],
        corpus: Sequence[Sequence[str]],
        normalize: Callable[[str], list[str]] = normalize_caption,
    ) -> None:
        from imgcap.metrics.cider_d import CiderD  # numpy only; imported when a reward is made

        self.vocabulary = list(words)
        self.normalize = normalize
        # raw reference captions of an image -> as the reward compares them
        self._normalized: dict[tuple[str, ...], list[str]] = {}
        self.cider = CiderD([self.references(refs) for refs in corpus])

    def references(self, captions: Sequence[str]) -> list[str]:
        """An image's references, normalised as the vocabulary sees them; each image's are
        normalised once (training batches repeat the same references every epoch)."""
        key = tuple(captions)
        if key not in self._normalized:
            self._normalized[key] = [" ".join(self.normalize(c)) for c in captions]
        return self._normalized[key]

    def words(self, tokens: Sequence[int]) -> str:
        """Token ids -> the caption as words, up to <end> (no specials)."""
        out = []
        for t in tokens:
            if t == END_ID:
                break
            if t not in (PAD_ID, START_ID):
                out.append(self.vocabulary[t])
        return " ".join(out)

    def __call__(
        self,
        token_rows: torch.Tensor | Sequence[Sequence[int]],
        references: Sequence[Sequence[str]],
    ) -> torch.Tensor:
        """token_rows (N, L) ids (a tensor or lists; <start> and <pad> skipped, cut at <end>),
        references: N lists of raw captions (row i is scored against ``references[i]``)
        -> (N,) float32 CIDEr-D rewards on the CPU."""
        rows = token_rows.tolist() if isinstance(token_rows, torch.Tensor) else token_rows
        captions = [self.words(r) for r in rows]
        scores = self.cider.scores(captions, [self.references(refs) for refs in references])
        return torch.as_tensor(scores, dtype=torch.float32)
