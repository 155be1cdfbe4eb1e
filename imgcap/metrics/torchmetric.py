"""The torchmetrics wrapper: gathers decoded captions over steps and processes, scores them once."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any

import torch
from torchmetrics import Metric

from imgcap.metrics.scorers import compute_caption_metrics

__all__ = ["CaptionMetric"]


class CaptionMetric(Metric):
    """Accumulates decoded captions over steps and scores them with
    :func:`compute_caption_metrics` at ``compute()``.

    States are Python lists of strings (``hypotheses``, ``references``, ``image_ids``).
    torchmetrics' default sync all-gathers tensors only, so :meth:`_sync_dist` is overridden
    to use ``torch.distributed.all_gather_object`` (pickles each rank's lists; one collective
    per compute, cheap next to METEOR). Encoding text into padded byte tensors would also work
    but needs a length exchange and adds nothing here. ``image_ids`` (optional, one hashable
    per caption) lets ``compute`` drop the duplicates a ``DistributedSampler`` adds to pad the
    last batch; the first occurrence is kept.

    Under DDP, ``compute`` scores on the first rank only and broadcasts the dict, so every
    rank returns the same values (log them with ``sync_dist=False``) and one JVM runs.
    Typical use: ``update`` in ``validation_step``; in ``on_validation_epoch_end``,
    ``log_dict({f"val/{k}": v for k, v in metric.compute().items()})`` then ``reset()``.
    ``compute`` raises ``ValueError`` when nothing was accumulated.

    ``forward`` only updates (it does not score the batch): per-batch scoring would start a JVM
    every step and CIDEr's idf is only meaningful over the whole set.

    ``meteor`` and ``backend`` are passed to :func:`compute_caption_metrics` (``backend="fast"``
    for per-epoch validation); ``meteor`` may be changed between computes.
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    _STRING_STATES = ("hypotheses", "references", "image_ids")

    def __init__(self, meteor: bool = True, backend: str = "pycocoevalcap", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.meteor = meteor
        self.backend = backend
        for name in self._STRING_STATES:
            self.add_state(name, default=[], dist_reduce_fx=None)

    def __hash__(self) -> int:
        # torchmetrics hashes the state values, and the references state holds lists: Lightning's
        # teardown after an error (or Ctrl-C) would then raise TypeError and hide the original
        # error. Identity is what a hash of a stateful object should mean anyway.
        return hash((self.__class__.__name__, id(self)))

    def update(
        self,
        hypotheses: Sequence[str],
        references: Sequence[Sequence[str]],
        image_ids: Sequence[Hashable] | torch.Tensor | None = None,
    ) -> None:
        """Add one batch: ``hypotheses[i]`` is scored against ``references[i]``."""
        if len(hypotheses) != len(references):
            raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
        if isinstance(image_ids, torch.Tensor):
            image_ids = image_ids.tolist()
        if image_ids is not None and len(image_ids) != len(hypotheses):
            raise ValueError(f"{len(image_ids)} image ids for {len(hypotheses)} hypotheses")
        if (image_ids is None) != (len(self.image_ids) == 0) and len(self.hypotheses) > 0:
            raise ValueError("pass image_ids in every update or in none")
        self.hypotheses.extend(str(h) for h in hypotheses)
        self.references.extend([str(r) for r in refs] for refs in references)
        if image_ids is not None:
            self.image_ids.extend(image_ids)

    def compute(self) -> dict[str, float]:
        hyps, refs = list(self.hypotheses), list(self.references)
        if self.image_ids:
            seen: set[Hashable] = set()
            keep = []
            for i, image_id in enumerate(self.image_ids):
                if image_id not in seen:
                    seen.add(image_id)
                    keep.append(i)
            hyps, refs = [hyps[i] for i in keep], [refs[i] for i in keep]
        if not (self._is_synced and torch.distributed.get_world_size(self.process_group) > 1):
            return self._score(hyps, refs)
        # Synced states are identical on every rank: score once on the group's first rank (one
        # JVM instead of one per GPU) and broadcast. Errors travel too, so no rank is left
        # waiting in the collective.
        group = self.process_group
        box: list[Any] = [None]
        if torch.distributed.get_rank(group) == 0:
            try:
                box[0] = self._score(hyps, refs)
            except Exception as err:  # re-raised below, on every rank
                box[0] = err
        src = torch.distributed.get_global_rank(group, 0) if group is not None else 0
        torch.distributed.broadcast_object_list(box, src=src, group=group)
        if isinstance(box[0], Exception):
            raise box[0]
        return box[0]

    def _score(self, hyps: list[str], refs: list[list[str]]) -> dict[str, float]:
        return compute_caption_metrics(hyps, refs, meteor=self.meteor, backend=self.backend)

    def forward(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        self.update(*args, **kwargs)

    def _sync_dist(self, dist_sync_fn: Callable | None = None, process_group: Any = None) -> None:
        group = process_group or self.process_group
        local = {name: list(getattr(self, name)) for name in self._STRING_STATES}
        gathered: list[Any] = [None] * torch.distributed.get_world_size(group)
        torch.distributed.all_gather_object(gathered, local, group=group)
        for name in self._STRING_STATES:
            setattr(self, name, [x for rank_state in gathered for x in rank_state[name]])

    def _apply(self, fn: Callable, exclude_state: Sequence[str] = ()) -> Metric:
        # .to(device) must not touch the string lists.
        return super()._apply(fn, exclude_state=(*exclude_state, *self._STRING_STATES))
