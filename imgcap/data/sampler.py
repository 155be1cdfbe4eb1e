"""The training sampler: a shuffled order that is a pure function of (seed, epoch), resumable
mid-epoch.

Lightning calls ``set_epoch`` before every epoch. The order of epoch ``e`` comes from a private
generator seeded with ``(seed, e)``, never from the global RNG, so fetching batches (or
prefetching one ahead) consumes none of the randomness that training uses (dropout, scheduled
sampling), and a resumed run sees exactly the order the uninterrupted run saw.

With ``captions_per_item`` (``data.captions_per_image=1``) the sampler also draws, per epoch and
from the same generator, which caption each image gets; it then yields ``(item, caption)`` pairs.

``resume_at(epoch, position)`` makes the next iteration start ``position`` items into that
epoch's order: the data module sets it from the checkpoint it is restored from.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


class ResumableSampler(Sampler):
    def __init__(
        self,
        num_items: int,
        seed: int = 0,
        shuffle: bool = True,
        captions_per_item: Sequence[int] | None = None,
        loader_generator: torch.Generator | None = None,
    ) -> None:
        if captions_per_item is not None and len(captions_per_item) != num_items:
            raise ValueError(f"{len(captions_per_item)} caption counts for {num_items} items")
        self.num_items = num_items
        self.seed = int(seed)
        self.shuffle = shuffle
        self.captions_per_item = list(captions_per_item) if captions_per_item else None
        # The DataLoader's own generator (worker base seeds): reseeded per epoch, so that making
        # an iterator draws nothing from the global RNG and workers get the same seeds on resume.
        self.loader_generator = loader_generator
        self.epoch = 0
        self._start = 0
        self._reseed_loader()

    def _reseed_loader(self) -> None:
        if self.loader_generator is not None:
            self.loader_generator.manual_seed(self._epoch_seed() + 1)

    def _epoch_seed(self) -> int:
        return (self.seed * 1_000_003 + self.epoch * 7_919) % (2**63 - 1)

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch = epoch
            self._start = 0
            self._reseed_loader()

    def resume_at(self, epoch: int, position: int) -> None:
        """The next iteration yields epoch ``epoch``'s order from item ``position`` on."""
        self.epoch = int(epoch)
        self._start = max(0, int(position))
        self._reseed_loader()

    def order_tensor(self) -> torch.Tensor:
        """This epoch's full order as int64: item indices (N,), or (item, caption) pairs (N, 2)."""
        generator = torch.Generator().manual_seed(self._epoch_seed())
        if self.shuffle:
            items = torch.randperm(self.num_items, generator=generator)
        else:
            items = torch.arange(self.num_items)
        if self.captions_per_item is None:
            return items
        counts = torch.tensor(self.captions_per_item, dtype=torch.float64)
        picks = (
            torch.rand(self.num_items, generator=generator, dtype=torch.float64) * counts
        ).long()
        return torch.stack([items, picks[items]], dim=1)

    def order(self) -> list:
        """This epoch's full order: item indices, or (item, caption) pairs."""
        order = self.order_tensor().tolist()
        return order if self.captions_per_item is None else [tuple(p) for p in order]

    def take_start(self) -> int:
        """Where the coming iteration starts in this epoch's order (the resume position), once."""
        start, self._start = self._start, 0
        return start

    def __iter__(self) -> Iterator:
        start = self.take_start()
        yield from self.order()[start:]

    def __len__(self) -> int:
        # The full epoch: Lightning counts the batches of a resumed epoch itself.
        return self.num_items


class TrainingOrder:
    """Where the training order stands, for checkpoints: the data module's sampler state.

    :meth:`sampler` makes the epoch's sampler (resumed where a restored checkpoint left it);
    :meth:`state` says where it stands after ``batches_done`` batches of the current epoch;
    :meth:`restore` takes a checkpoint's state back.
    """

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)
        self._resume_position: tuple[int, int] | None = None  # (epoch, items already seen)
        self._sampler: ResumableSampler | None = None

    @property
    def resume_position(self) -> tuple[int, int] | None:
        """(epoch, items already seen) restored from a checkpoint, until a sampler takes it."""
        return self._resume_position

    def sampler(
        self,
        size: int,
        captions_per_item: Sequence[int] | None,
        loader_generator: torch.Generator,
    ) -> ResumableSampler:
        """The training order, resumed where a checkpoint left it (one sampler serves the
        per-item and the resident loaders, so both see the same order)."""
        sampler = ResumableSampler(
            size,
            seed=self.seed,
            captions_per_item=captions_per_item,
            loader_generator=loader_generator,
        )
        if self._resume_position is not None:
            sampler.resume_at(*self._resume_position)
            self._resume_position = None
        self._sampler = sampler
        return sampler

    def state(self, epoch: int, batches_done: int, batch_size: int) -> dict[str, int]:
        """``{"epoch", "position"}`` (items already trained on in that epoch); empty before
        the first training loader exists."""
        if self._sampler is None:
            return {}
        position = batches_done * batch_size
        if position >= self._sampler.num_items:
            epoch, position = epoch + 1, 0  # the epoch's batches are all done: next one's start
        return {"epoch": int(epoch), "position": int(position)}

    def restore(self, state: dict[str, int]) -> None:
        if state:
            self._resume_position = (int(state["epoch"]), int(state["position"]))
            if self._sampler is not None:
                self._sampler.resume_at(*self._resume_position)
