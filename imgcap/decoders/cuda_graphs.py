"""Replay the decoder's fixed-shape teacher-forced unroll as CUDA graphs.

The decoder's recurrence is small (a few (B, 512) matmuls per step) and runs ~20 steps, forward
and backward: on a GPU its cost is kernel launches, not arithmetic. ``forward_fixed`` (the fixed
unroll, :func:`imgcap.decoders.lstm_unrolls.unroll_fixed`) has static shapes and no host sync,
so ``torch.cuda.make_graphed_callables`` can capture its forward and its backward once per input
shape and replay each as a single launch afterwards.

To keep the number of captured shapes small, caption tensors are padded on the right with
``<pad>`` to a multiple of ``time_bucket`` steps (padded positions are masked by ``lengths`` and
cut off again), so a run sees one graph per (batch size, length bucket): typically the full batch
and the last, smaller one, times a few length buckets.

Anything that stops a capture (hooks on the decoder, an unsupported op, too little memory) makes
the runner warn once and fall back to the eager ``forward_fixed`` for good: speed is lost, never
correctness. Used only on CUDA tensors; on anything else it calls ``forward_fixed`` directly.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from imgcap.tokens import PAD_ID


class _FixedUnroll(nn.Module):
    """``decoder.forward_fixed`` as a module, so its parameters are captured with it."""

    def __init__(self, decoder: nn.Module) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(self, features, captions, lengths):  # noqa: D102 - same as forward_fixed
        return self.decoder.forward_fixed(features, captions, lengths)


class GraphedUnroll:
    """Callable with ``forward_fixed``'s signature that replays captured CUDA graphs.

    Args:
        decoder: the decoder whose ``forward_fixed`` is captured (its parameters are updated in
            place by the optimizer, which graphs see since they read the same memory).
        time_bucket: pad the caption length to a multiple of this many tokens.
        max_graphs: stop capturing new shapes past this many (each holds its own activations).
    """

    def __init__(self, decoder: nn.Module, time_bucket: int = 8, max_graphs: int = 12) -> None:
        self.decoder = decoder
        self.time_bucket = time_bucket
        self.max_graphs = max_graphs
        self.graphs: dict[tuple, Any] = {}
        self.disabled_reason: str | None = None
        # The captured backward accumulates into parameter gradients whose AccumulateGrad nodes
        # were made on the default stream during the eager warm-up, and torch warns about that
        # in every run with graphs (on an H100 capture and replay worked: 6.6x faster steps).
        # The message is about this situation alone, so it is silenced here and nowhere else.
        warnings.filterwarnings(
            "ignore",
            message=r"The AccumulateGrad node's stream does not match",
            category=UserWarning,
        )

    def __call__(
        self, features: torch.Tensor, captions: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if (
            self.disabled_reason is not None
            or features.device.type != "cuda"
            or not self.decoder.training
            or not torch.is_grad_enabled()
        ):
            return self.decoder.forward_fixed(features, captions, lengths)
        T = captions.shape[1]
        padded_T = -(-T // self.time_bucket) * self.time_bucket
        if padded_T != T:
            captions = F.pad(captions, (0, padded_T - T), value=PAD_ID)
        graphed = self._graph_for(features, captions, lengths)
        if graphed is None:
            logits, alphas = self.decoder.forward_fixed(features, captions, lengths)
        else:
            with self._autocast():
                logits, alphas = graphed(features, captions, lengths)
        return logits[:, : T - 1], alphas[:, : T - 1]

    # ------------------------------------------------------------------ internals
    @staticmethod
    def _autocast_dtype() -> torch.dtype | None:
        """The CUDA autocast dtype in force (e.g. Lightning's bf16-mixed), or None."""
        try:
            enabled, dtype = torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda")
        except (TypeError, AttributeError):  # torch < 2.4 spells them differently
            enabled, dtype = torch.is_autocast_enabled(), torch.get_autocast_gpu_dtype()
        return dtype if enabled else None

    def _autocast(self):
        # Graphs must be captured and replayed with autocast's weight cache off: a cached cast
        # would be a tensor made outside the graph's memory pool.
        dtype = self._autocast_dtype()
        return torch.autocast(
            "cuda", dtype=dtype or torch.float16, enabled=dtype is not None, cache_enabled=False
        )

    def _graph_for(self, features, captions, lengths):
        key = (
            tuple(features.shape),
            tuple(captions.shape),
            features.dtype,
            features.requires_grad,
            self._autocast_dtype(),
            features.device,
        )
        if key in self.graphs:
            return self.graphs[key]
        if len(self.graphs) >= self.max_graphs:
            return None
        samples = (
            features.detach().clone().requires_grad_(features.requires_grad),
            captions.clone(),
            lengths.clone(),
        )
        try:
            with self._autocast():
                graphed = torch.cuda.make_graphed_callables(
                    _FixedUnroll(self.decoder), samples, allow_unused_input=True
                )
        except Exception as err:  # never fail training over a speed-up
            self.disabled_reason = f"{err.__class__.__name__}: {str(err).splitlines()[0]}"
            warnings.warn(
                f"CUDA graph capture of the decoder failed ({self.disabled_reason}); training "
                "continues without graphs (set model.cuda_graphs=false to silence this)",
                RuntimeWarning,
                stacklevel=3,
            )
            return None
        self.graphs[key] = graphed
        return graphed
