"""LSTM caption decoder with soft attention (Show, Attend and Tell).

Token conventions (see ``imgcap.tokens``): ``<pad>=0 <start>=1 <end>=2 <unk>=3``; a caption
tensor reads ``[<start>, w1, ..., wn, <end>, <pad>, ...]``.

One decoding step, from previous word y_{t-1} and state (h, c):

    context, alpha = attention(W_e e, e, h)                     # (N, C), (N, P)
    z = sigmoid(f_beta(h)) * context                            # gated context (N, C)
    h', c' = LSTMCell([embed(y_{t-1}); z], (h, c))
    logits = out(dropout(h'))                                   # plain output
    logits = out(dropout(embed(y_{t-1}) + L_h h' + L_z z))      # deep output (deep_output=True)

The step is written once (:func:`imgcap.decoders.lstm_cell.attend_and_update`) and every path
calls it: ``step`` (greedy decoding, beam search, sampling) and the teacher-forced unrolls of
``forward``, chosen by ``unroll`` (:mod:`imgcap.decoders.lstm_unrolls`): ``shrink`` (a batch
that shrinks as captions end: least arithmetic, fastest on CPUs) or ``fixed`` (static shapes,
no host sync: capturable as CUDA graphs, see :mod:`imgcap.decoders.cuda_graphs`). ``auto`` (the
default) picks ``fixed`` for CUDA tensors and ``shrink`` elsewhere. All give the same logits to
float tolerance (tests/decoders/test_decoder_paths.py).

The settings (sizes, dropout, output layer, unroll) are :class:`LSTMAttentionSettings`, the
single home of their defaults and checks.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch
from torch import nn

from imgcap.decoders.attention import AdditiveAttention
from imgcap.decoders.contract import gather_rows
from imgcap.decoders.lstm_cell import CellWeights, attend_and_update, cell_weights, input_gates
from imgcap.decoders.lstm_unrolls import unroll_fixed, unroll_shrinking
from imgcap.decoders.registry import register_decoder
from imgcap.settings import Settings, choice, flag, integer, number
from imgcap.tokens import PAD_ID

UNROLL_MODES = ("auto", "shrink", "fixed")


@dataclass(frozen=True)
class LSTMAttentionSettings(Settings):
    """The attention LSTM's settings (``model.decoder.*``): the single home of their defaults
    and checks; ``conf/model/decoder/lstm_attention.yaml`` extends it as its schema.

    embed_dim, decoder_dim, attention_dim: E (word embedding), D (LSTM state), A (attention).
    dropout: before the output layer.
    deep_output: logits from h + context + embedding instead of h alone.
    precompute_projection: compute the attention's W_e e once per image (False recomputes it
        every step: slower, same results; only the speed benchmark turns it off).
    unroll: the teacher-forced unroll, ``shrink`` | ``fixed`` | ``auto`` (fixed on CUDA).
    """

    config_key: ClassVar[str] = "model.decoder"

    embed_dim: int = integer(512)
    decoder_dim: int = integer(512)
    attention_dim: int = integer(512)
    dropout: float = number(0.5, high=1.0, high_open=True)
    deep_output: bool = flag(False)
    precompute_projection: bool = flag(True)
    unroll: str = choice("auto", UNROLL_MODES)


@dataclass
class LSTMState:
    """Recurrent state for N = B * g rows: g rows (beams, samples) for each of B images.

    h, c: (N, D) LSTM state, rows image-major.  features: (B, P, C) encoder output, one per
    image and shared by its rows.  projected: (B, P, A) = W_e features, computed once per image;
    ``None`` means the decoder recomputes it every step (only the speed benchmark does that).
    """

    h: torch.Tensor
    c: torch.Tensor
    features: torch.Tensor
    projected: torch.Tensor | None
    #: the decoder's step weights, arranged once per decode or forward (shared by all rows)
    weights: CellWeights | None = None

    def select(self, index: torch.Tensor) -> LSTMState:
        """index (B, m): the rows each image's m new rows continue (see the decoder contract).
        Only h and c are gathered; the per-image features and projection are shared."""
        return replace(self, h=gather_rows(self.h, index), c=gather_rows(self.c, index))

    def prefix(self, n: int) -> LSTMState:
        """The first n images' rows (views, no copy); one row per image (teacher forcing)."""
        return LSTMState(
            self.h[:n],
            self.c[:n],
            self.features[:n],
            None if self.projected is None else self.projected[:n],
            self.weights,
        )

    def with_hidden(self, h: torch.Tensor, c: torch.Tensor) -> LSTMState:
        return replace(self, h=h, c=c)


@register_decoder("lstm_attention")
class AttentionLSTMDecoder(nn.Module):
    """Attention LSTM decoder; see the module docstring for the step equations. Implements the
    decoder contract (:mod:`imgcap.decoders.contract`).

    Args:
        vocab_size: V, output classes (special tokens included).
        encoder_dim: C, channels of each encoder region.
        args, kwargs: the fields of :class:`LSTMAttentionSettings` (positionally in their
            order, ``embed_dim, decoder_dim, attention_dim, ...``, or by name), or
            ``settings=`` one instance of it.

    Attributes mirror the settings (``vocab_size, encoder_dim, embed_dim, decoder_dim,
    attention_dim, dropout, deep_output, precompute_projection, unroll``). Layers: ``embedding``,
    ``attention`` (``encoder_proj``, ``decoder_proj``, ``score``), ``init_h``, ``init_c``,
    ``f_beta``, ``lstm``, ``drop``, ``out`` and, with deep output, ``deep_h``, ``deep_z``.
    """

    settings_class = LSTMAttentionSettings
    # teacher_forcing_ratio < 1 feeds the decoder's own predictions (see unroll_shrinking)
    supports_scheduled_sampling = True

    def __init__(
        self,
        vocab_size: int,
        encoder_dim: int,
        *args: Any,
        settings: LSTMAttentionSettings | None = None,
        **kwargs: Any,
    ):
        super().__init__()
        if settings is None:
            settings = LSTMAttentionSettings.from_args(*args, **kwargs)
        self.settings = settings
        self.vocab_size = vocab_size
        self.encoder_dim = encoder_dim
        embed_dim, decoder_dim = settings.embed_dim, settings.decoder_dim
        attention_dim, dropout = settings.attention_dim, settings.dropout
        deep_output = settings.deep_output
        self.embed_dim = embed_dim
        self.decoder_dim = decoder_dim
        self.attention_dim = attention_dim
        self.dropout = dropout
        self.deep_output = deep_output
        # False recomputes W_e e at every step: slower, same results; kept for the benchmark
        self.precompute_projection = settings.precompute_projection
        self.unroll = settings.unroll
        # Optional replacement for ``forward_fixed`` (e.g. a CUDA-graph replayer), same signature.
        self.fixed_runner = None

        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=PAD_ID)
        self.attention = AdditiveAttention(encoder_dim, decoder_dim, attention_dim)
        self.init_h = nn.Linear(encoder_dim, decoder_dim)
        self.init_c = nn.Linear(encoder_dim, decoder_dim)
        self.f_beta = nn.Linear(decoder_dim, encoder_dim)
        self.lstm = nn.LSTMCell(embed_dim + encoder_dim, decoder_dim)
        self.drop = nn.Dropout(dropout)
        if deep_output:
            # project h and z into the embedding space and add the previous word's embedding
            self.deep_h = nn.Linear(decoder_dim, embed_dim)
            self.deep_z = nn.Linear(encoder_dim, embed_dim)
            self.out = nn.Linear(embed_dim, vocab_size)
        else:
            self.out = nn.Linear(decoder_dim, vocab_size)
        self._init_weights()

    def _init_weights(self) -> None:
        # N(0, 1) embeddings would dwarf the other LSTM inputs at the start of training
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        with torch.no_grad():
            self.embedding.weight[PAD_ID].zero_()
        nn.init.zeros_(self.out.bias)

    # ---- the step ----------------------------------------------------------------------------

    def init_state(self, features: torch.Tensor) -> LSTMState:
        """features (B, P, C) -> initial state, one row per image: h0, c0 (B, D) from the mean
        region vector, the attention projection W_e e (B, P, A) computed once, and the step
        weights arranged once."""
        mean = features.mean(dim=1)  # (N, C)
        projected = self.attention.project(features) if self.precompute_projection else None
        return LSTMState(
            self.init_h(mean), self.init_c(mean), features, projected, cell_weights(self)
        )

    def gate(self, h: torch.Tensor) -> torch.Tensor:
        """h (N, D) -> sigmoid(f_beta(h)) (N, C) in (0, 1): how much of the context to let in."""
        return torch.sigmoid(self.f_beta(h))

    def advance(
        self, emb: torch.Tensor, state: LSTMState
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Recurrent half of a step: emb (N, E) of the previous word, N = B * g rows
        -> h, c (N, D), gated context z (N, C), alpha (N, P)."""
        weights = state.weights if state.weights is not None else cell_weights(self)
        projected = state.projected
        if projected is None:
            projected = self.attention.project(state.features)  # (B, P, A)
        return attend_and_update(
            weights, input_gates(weights, emb), state.h, state.c, projected, state.features
        )

    def output_logits(self, h: torch.Tensor, z: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """Output half of a step: h (..., D), z (..., C), emb (..., E) -> logits (..., V)."""
        if self.deep_output:
            return self.out(self.drop(emb + self.deep_h(h) + self.deep_z(z)))
        return self.out(self.drop(h))

    def step(
        self, prev_tokens: torch.Tensor, state: LSTMState
    ) -> tuple[torch.Tensor, torch.Tensor, LSTMState]:
        """prev_tokens (N,) long -> logits (N, V) for the next word, alpha (N, P), new state."""
        emb = self.embedding(prev_tokens)  # (N, E)
        h, c, z, alpha = self.advance(emb, state)
        return self.output_logits(h, z, emb), alpha, state.with_hidden(h, c)

    # ---- training ----------------------------------------------------------------------------

    def enable_cuda_graphs(self) -> None:
        """Replay the fixed unroll as CUDA graphs (when the fixed unroll is the one in use)."""
        if self.unroll_mode(self.out.weight.device) == "fixed":
            from imgcap.decoders.cuda_graphs import GraphedUnroll

            self.fixed_runner = GraphedUnroll(self)

    def unroll_mode(self, device: torch.device) -> str:
        """The teacher-forced unroll used for tensors on ``device``: ``shrink`` or ``fixed``."""
        if self.unroll != "auto":
            return self.unroll
        return "fixed" if device.type == "cuda" else "shrink"

    def forward(
        self,
        features: torch.Tensor,
        captions: torch.Tensor,
        lengths: torch.Tensor | None = None,
        teacher_forcing_ratio: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Predict ``captions[:, 1:]`` from inputs ``captions[:, :-1]``.

        Args:
            features: (B, P, C) encoder output.
            captions: (B, T) long, ``[<start>, w1, ..., <end>, <pad>...]``.
            lengths: (B,) tokens per caption counting <start> and <end> (i.e. non-pad tokens),
                or None to run all T-1 steps for every caption. With lengths, caption i runs
                ``lengths[i] - 1`` steps and its later positions get logits 0 and alpha 0
                (they are padding targets; the loss must ignore them).
            teacher_forcing_ratio: probability of feeding the ground-truth previous word.
                Below 1, from step 1 on each caption independently feeds its own previous
                argmax prediction with probability ``1 - ratio`` (scheduled sampling).
            generator: RNG for that choice (defaults to the global one).

        Returns:
            logits (B, T-1, V) and alphas (B, T-1, P).
        """
        if teacher_forcing_ratio >= 1.0 and self.unroll_mode(captions.device) == "fixed":
            if lengths is None:
                lengths = torch.full(
                    (captions.shape[0],),
                    captions.shape[1],
                    dtype=torch.long,
                    device=captions.device,
                )
            run = self.fixed_runner or self.forward_fixed
            return run(features, captions, lengths.to(device=captions.device, dtype=torch.long))
        return self.forward_shrinking(features, captions, lengths, teacher_forcing_ratio, generator)

    def forward_shrinking(
        self,
        features: torch.Tensor,
        captions: torch.Tensor,
        lengths: torch.Tensor | None = None,
        teacher_forcing_ratio: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``forward`` with the shrinking batch (also the scheduled-sampling path); see
        :func:`imgcap.decoders.lstm_unrolls.unroll_shrinking`."""
        return unroll_shrinking(self, features, captions, lengths, teacher_forcing_ratio, generator)

    def forward_fixed(
        self, features: torch.Tensor, captions: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced ``forward`` with static shapes (capturable as a CUDA graph); see
        :func:`imgcap.decoders.lstm_unrolls.unroll_fixed`."""
        return unroll_fixed(self, features, captions, lengths)
