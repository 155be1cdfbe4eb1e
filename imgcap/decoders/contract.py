"""The decoder contract: what every caption decoder provides, and all that the rest of imgcap
uses of it (decoding, training objectives, the LightningModule, ``caption.py``).

A decoder is an ``nn.Module`` with:

``vocab_size: int``
    the number of output classes V (the vocabulary, special tokens included).
``init_state(features) -> state``
    features (B, P, C) from the encoder -> the state before the first word, one row per image.
``step(prev_tokens, state) -> (logits, alpha, state)``
    prev_tokens (N,) long, the previous word of each of the state's N rows -> logits (N, V) for
    the next word, alpha (N, P) the attention over the P regions that produced it (for
    ``caption.py attention=true``; any non-negative map summing to 1 over P), and the new state.
``forward(features, captions, lengths=None, teacher_forcing_ratio=1.0, generator=None)``
    teacher-forced training: features (B, P, C), captions (B, T) ``[<start> w.. <end> <pad>..]``
    -> logits (B, T-1, V) predicting ``captions[:, 1:]``, and alphas (B, T-1, P) or ``None``
    when the decoder has no per-step attention worth regularising. Positions past a caption's
    length may hold anything: they are padding targets and every objective ignores them.
    A decoder that does not support scheduled sampling raises ``ConfigError`` for a ratio < 1.

and a state object with

``state.select(index) -> state``
    index (B, m) long: for each of the B images, which m of the current rows (global row
    numbers, rows are image-major) the new state's rows ``b*m .. b*m+m-1`` continue. A row is
    only ever continued by a row of the same image, so per-image memory (the encoder grid, its
    projections, cross-attention keys) can stay (B, ...) and be shared by the image's rows; only
    per-row tensors (hidden states, self-attention caches) are gathered. Beam search uses it to
    expand each image into k beams and to reorder them; sampling uses it to draw n captions per
    image.

Optional:

``enable_cuda_graphs() -> None``
    called once on a CUDA device when ``model.cuda_graphs`` allows it (the LSTM replays its
    unroll as graphs).
``supports_scheduled_sampling = True``
    the decoder honours ``teacher_forcing_ratio < 1``; without it such settings are refused
    when the model is built.
``max_len: int``
    the most positions the decoder can handle; ``model.max_len`` above it is refused when the
    model is built.

A decoder registers itself under a name (:func:`imgcap.decoders.registry.register_decoder`) and is
then picked by ``model/decoder=<name>``; its constructor takes ``vocab_size``, ``encoder_dim``
and plain keyword settings, which the checkpoint stores as a plain dict.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class DecoderState(Protocol):
    def select(self, index: torch.Tensor) -> DecoderState: ...


@runtime_checkable
class CaptionDecoder(Protocol):
    vocab_size: int

    def init_state(self, features: torch.Tensor) -> Any: ...

    def step(
        self, prev_tokens: torch.Tensor, state: Any
    ) -> tuple[torch.Tensor, torch.Tensor, Any]: ...

    def __call__(
        self,
        features: torch.Tensor,
        captions: torch.Tensor,
        lengths: torch.Tensor | None = None,
        teacher_forcing_ratio: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]: ...


def repeat_rows(batch: int, rows: int, device: torch.device | str) -> torch.Tensor:
    """The ``select`` index that gives each of ``batch`` single-row images ``rows`` copies of
    its row: (batch, rows) with row b filled with b."""
    return torch.arange(batch, device=device).unsqueeze(1).expand(batch, rows)


def gather_rows(tensor: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows of a per-row tensor (N, ...) picked by a ``select`` index (B, m) -> (B*m, ...)."""
    return tensor.index_select(0, index.reshape(-1))
