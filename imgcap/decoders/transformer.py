"""Transformer caption decoder (Vaswani et al., 2017) over the encoder grid.

Token conventions (see :mod:`imgcap.tokens`): ``<pad>=0 <start>=1 <end>=2 <unk>=3``; a caption
tensor reads ``[<start>, w1, ..., wn, <end>, <pad>, ...]``.

The encoder grid becomes the memory the caption attends to, once per image:

    memory = LayerNorm(W_m e) + region_pos                       # (B, P, d)

where ``region_pos`` is a fixed 2-D sinusoidal code of each region's row and column (the grid is
square, ``encoded_size x encoded_size``; a non-square P gets a 1-D code of the region index), so
attention can tell left from right. The caption so far, at positions 0..t:

    x = dropout(sqrt(d) * embed(y) + pos)                         # (N, t+1, d), pos sinusoidal
    for each of the num_layers pre-norm layers:
        x = x + dropout(SelfAttention(LN(x)))                     # causal: position i sees 0..i
        x = x + dropout(CrossAttention(LN(x), memory))            # over the P regions
        x = x + dropout(W_2 dropout(relu(W_1 LN(x))))
    logits = W_out LN(x)                                          # W_out tied to embed (optional)

Pre-norm (LayerNorm inside each residual branch, one more before the output layer) trains
stably without a learning-rate warmup, which the shared optimizer settings do not provide.

Decoding (``init_state`` / ``step``) caches what earlier positions computed: each layer's
cross-attention keys and values over the memory (per image, computed once) and its
self-attention keys and values for the positions so far (per row, one position appended per
step). A step therefore costs O(t) and recomputes nothing. Teacher-forced ``forward`` runs the
same layers on all positions at once under a causal mask; both give the same logits to float
tolerance (tests/decoders/test_transformer_decoder.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from imgcap.decoders.contract import gather_rows
from imgcap.decoders.registry import register_decoder
from imgcap.errors import ConfigError
from imgcap.settings import Settings, flag, integer, number
from imgcap.tokens import PAD_ID


@dataclass(frozen=True)
class TransformerSettings(Settings):
    """The Transformer decoder's settings (``model.decoder.*``): the single home of their
    defaults and checks; ``conf/model/decoder/transformer.yaml`` extends it as its schema.

    d_model: width of the layers; a multiple of num_heads.
    num_layers, num_heads, ff_dim: layers, attention heads, feed-forward width.
    dropout: on the embeddings, the memory and every residual branch.
    attention_dropout: on the attention weights.
    max_len: positions a caption may have (inputs, <start> included); decoding past it or
        teacher forcing a longer caption is a ConfigError naming ``model.decoder.max_len``.
    tie_embeddings: share the output layer's weights with the token embedding.
    region_positions: add a 2-D position code to the memory (which grid cell each region is).
    """

    config_key: ClassVar[str] = "model.decoder"

    d_model: int = integer(512)
    num_layers: int = integer(3)
    num_heads: int = integer(8)
    ff_dim: int = integer(2048)
    dropout: float = number(0.1, high=1.0, high_open=True)
    attention_dropout: float = number(0.1, high=1.0, high_open=True)
    max_len: int = integer(64)
    tie_embeddings: bool = flag(True)
    region_positions: bool = flag(True)

    def check(self) -> None:
        if self.d_model % self.num_heads:
            raise ConfigError(
                f"model.decoder.d_model={self.d_model} must be a multiple of "
                f"model.decoder.num_heads={self.num_heads}"
            )


@dataclass
class TransformerState:
    """Decoding state for N = B * g rows: g rows (beams, samples) for each of B images, rows
    image-major. One entry per layer in each tuple; H heads of dh = d_model / H channels.

    cross_k, cross_v: (B, H, P, dh) the cross-attention keys and values of each image's memory,
        computed once by ``init_state`` and shared by the image's rows (never copied per row).
    self_k, self_v: (N, H, t, dh) the self-attention keys and values of the t positions each
        row has read so far (0 before the first step).
    """

    cross_k: tuple[torch.Tensor, ...]
    cross_v: tuple[torch.Tensor, ...]
    self_k: tuple[torch.Tensor, ...]
    self_v: tuple[torch.Tensor, ...]

    @property
    def length(self) -> int:
        """t: the positions each row has read (the next token goes to position t)."""
        return self.self_k[0].shape[2]

    def select(self, index: torch.Tensor) -> TransformerState:
        """index (B, m): the rows each image's m new rows continue (see the decoder contract).
        Only the per-row self-attention caches are gathered; the memory keys stay per image."""
        return replace(
            self,
            self_k=tuple(gather_rows(k, index) for k in self.self_k),
            self_v=tuple(gather_rows(v, index) for v in self.self_v),
        )


def sinusoid(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """positions (n,) -> (n, dim) float64: sin in the first half of the channels, cos in the
    second, at wavelengths 2*pi .. 10000*2*pi (Vaswani et al.); an odd dim drops the last cos."""
    half = (dim + 1) // 2
    freqs = torch.exp(
        torch.arange(half, dtype=torch.float64) * (-math.log(10000.0) / max(half, 1))
    )  # (half,)
    angles = positions.double().unsqueeze(1) * freqs.unsqueeze(0)  # (n, half)
    return torch.cat([angles.sin(), angles.cos()], dim=1)[:, :dim]


def grid_positions(num_regions: int, dim: int) -> torch.Tensor:
    """(P, dim) float64 code of each grid region's place: the row's sinusoid in the first half of the
    channels and the column's in the second, regions row-major on a square grid; a 1-D code of
    the region index when P is not a square."""
    side = math.isqrt(num_regions)
    index = torch.arange(num_regions)
    if side * side != num_regions:
        return sinusoid(index, dim)
    row, col = index // side, index % side
    return torch.cat([sinusoid(row, dim // 2), sinusoid(col, dim - dim // 2)], dim=1)


class DecoderLayer(nn.Module):
    """One pre-norm layer: masked self-attention, cross-attention over the memory, feed-forward.

    Attention is written out (``scaled_dot_product_attention`` on explicit heads) rather than
    taken from ``nn.MultiheadAttention`` so that decoding can keep per-layer key/value caches and
    share one image's memory keys between its rows.
    """

    def __init__(
        self, d_model: int, num_heads: int, ff_dim: int, dropout: float, attention_dropout: float
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.attention_dropout = attention_dropout
        self.norm_self = nn.LayerNorm(d_model)
        self.self_qkv = nn.Linear(d_model, 3 * d_model)
        self.self_out = nn.Linear(d_model, d_model)
        self.norm_cross = nn.LayerNorm(d_model)
        self.cross_q = nn.Linear(d_model, d_model)
        self.cross_kv = nn.Linear(d_model, 2 * d_model)
        self.cross_out = nn.Linear(d_model, d_model)
        self.norm_ff = nn.LayerNorm(d_model)
        self.ff_in = nn.Linear(d_model, ff_dim)
        self.ff_out = nn.Linear(ff_dim, d_model)
        self.drop = nn.Dropout(dropout)

    def memory_kv(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """memory (B, P, d) -> cross-attention keys, values (B, H, P, dh) each."""
        B, P, _ = memory.shape
        kv = self.cross_kv(memory).view(B, P, 2, self.num_heads, self.head_dim)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, P, dh) each
        return k.contiguous(), v.contiguous()

    def forward(
        self,
        x: torch.Tensor,
        cross_k: torch.Tensor,
        cross_v: torch.Tensor,
        self_k: torch.Tensor,
        self_v: torch.Tensor,
        want_alpha: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """x (N, S, d): S new positions of N = B * g rows, following the t cached ones.

        cross_k, cross_v (B, H, P, dh) per image; self_k, self_v (N, H, t, dh) per row.
        Either S new positions from t = 0 (teacher forcing, causal mask) or S = 1 (a step).
        Returns x (N, S, d), self_k, self_v (N, H, t+S, dh), and with ``want_alpha`` the
        cross-attention weights averaged over heads (N, S, P), else None.
        """
        N, S, d = x.shape
        B, H, dh = cross_k.shape[0], self.num_heads, self.head_dim
        t = self_k.shape[2]
        assert S == 1 or t == 0, "several new positions only from an empty cache"
        assert N % B == 0, f"{N} rows are not a whole number of rows for each of {B} images"
        p_drop = self.attention_dropout if self.training else 0.0

        # masked self-attention over the cached positions and the new ones
        q, k, v = self.self_qkv(self.norm_self(x)).view(N, S, 3, H, dh).permute(2, 0, 3, 1, 4)
        if t:
            k, v = torch.cat([self_k, k], dim=2), torch.cat([self_v, v], dim=2)  # (N, H, t+S, dh)
        att = F.scaled_dot_product_attention(q, k, v, dropout_p=p_drop, is_causal=S > 1)
        x = x + self.drop(self.self_out(att.transpose(1, 2).reshape(N, S, d)))

        # cross-attention: an image's g rows are g*S queries against that image's memory
        h = self.norm_cross(x).reshape(B, (N // B) * S, d)
        cq = self.cross_q(h).view(B, -1, H, dh).transpose(1, 2)  # (B, H, g*S, dh)
        alpha = None
        if want_alpha:
            weights = (cq @ cross_k.transpose(-1, -2) / math.sqrt(dh)).softmax(-1)  # (B,H,gS,P)
            alpha = weights.mean(1).reshape(N, S, -1)  # (N, S, P)
            cross = F.dropout(weights, p_drop) @ cross_v  # (B, H, g*S, dh)
        else:
            cross = F.scaled_dot_product_attention(cq, cross_k, cross_v, dropout_p=p_drop)
        x = x + self.drop(self.cross_out(cross.transpose(1, 2).reshape(N, S, d)))

        x = x + self.drop(self.ff_out(self.drop(F.relu(self.ff_in(self.norm_ff(x))))))
        return x, k, v, alpha


@register_decoder("transformer")
class TransformerDecoder(nn.Module):
    """Transformer decoder over the encoder grid; see the module docstring for the layers.
    Implements the decoder contract (:mod:`imgcap.decoders.contract`).

    Args:
        vocab_size: V, output classes (special tokens included).
        encoder_dim: C, channels of each encoder region.
        args, kwargs: the fields of :class:`TransformerSettings` (positionally in their order
            or by name), or ``settings=`` one instance of it.
    """

    settings_class = TransformerSettings

    def __init__(
        self,
        vocab_size: int,
        encoder_dim: int,
        *args: Any,
        settings: TransformerSettings | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        if settings is None:
            settings = TransformerSettings.from_args(*args, **kwargs)
        self.settings = settings
        self.vocab_size = vocab_size
        self.encoder_dim = encoder_dim
        d_model, num_layers = settings.d_model, settings.num_layers
        num_heads, ff_dim = settings.num_heads, settings.ff_dim
        dropout, attention_dropout = settings.dropout, settings.attention_dropout
        max_len, tie_embeddings = settings.max_len, settings.tie_embeddings
        self.d_model = d_model
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.ff_dim = ff_dim
        self.dropout = dropout
        self.attention_dropout = attention_dropout
        self.max_len = max_len
        self.tie_embeddings = tie_embeddings
        self.region_positions = settings.region_positions

        self.embedding = nn.Embedding(vocab_size, d_model, padding_idx=PAD_ID)
        # Fixed, so not saved: a checkpoint can be used with a larger max_len.
        positions = sinusoid(torch.arange(max_len), d_model).float()  # (max_len, d)
        self.register_buffer("positions", positions, persistent=False)
        self._region_codes: dict[tuple, torch.Tensor] = {}  # (P, device, dtype) -> (P, d)
        self.memory_proj = nn.Linear(encoder_dim, d_model)
        self.memory_norm = nn.LayerNorm(d_model)
        self.layers = nn.ModuleList(
            DecoderLayer(d_model, num_heads, ff_dim, dropout, attention_dropout)
            for _ in range(num_layers)
        )
        self.final_norm = nn.LayerNorm(d_model)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(d_model, vocab_size)
        if tie_embeddings:
            self.out.weight = self.embedding.weight
        self._init_weights()

    def _init_weights(self) -> None:
        for name, p in self.named_parameters():
            if p.dim() == 2 and name not in ("embedding.weight", "out.weight"):
                nn.init.xavier_uniform_(p)
            elif name.endswith("bias") and "norm" not in name:
                nn.init.zeros_(p)
        # std d^-1/2: the sqrt(d)-scaled embeddings have unit scale, like the positions, and
        # the output logits start at unit scale
        nn.init.normal_(self.embedding.weight, std=self.d_model**-0.5)
        if not self.tie_embeddings:
            nn.init.normal_(self.out.weight, std=self.d_model**-0.5)
        with torch.no_grad():
            self.embedding.weight[PAD_ID].zero_()

    # ---- shared pieces -------------------------------------------------------------------------

    def memory(self, features: torch.Tensor) -> torch.Tensor:
        """features (B, P, C) -> memory (B, P, d): projected regions plus their grid positions."""
        memory = self.memory_norm(self.memory_proj(features))
        if self.region_positions:
            key = (features.shape[1], memory.device, memory.dtype)
            if key not in self._region_codes:  # one per grid size and device: no copy per batch
                self._region_codes[key] = grid_positions(key[0], self.d_model).to(memory)
            memory = memory + self._region_codes[key]
        return self.drop(memory)

    def embed(self, tokens: torch.Tensor, start: int) -> torch.Tensor:
        """tokens (N, S) at positions start..start+S-1 -> (N, S, d)."""
        end = start + tokens.shape[1]
        if end > self.max_len:
            raise ConfigError(
                f"caption position {end - 1} is past model.decoder.max_len={self.max_len}; "
                f"raise model.decoder.max_len to at least {end} (or lower model.max_len / "
                "data.max_caption_len)"
            )
        x = self.embedding(tokens) * math.sqrt(self.d_model) + self.positions[start:end]
        return self.drop(x)

    def run_layers(
        self, x: torch.Tensor, state: TransformerState, want_alpha: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None, TransformerState]:
        """x (N, S, d) new positions -> logits (N, S, V), last layer's alpha (N, S, P) or None,
        and the state with their self-attention keys and values appended."""
        keys, values, alpha = [], [], None
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x, k, v, alpha = layer(
                x,
                state.cross_k[i],
                state.cross_v[i],
                state.self_k[i],
                state.self_v[i],
                want_alpha=want_alpha and i == last,
            )
            keys.append(k)
            values.append(v)
        logits = self.out(self.final_norm(x))
        return logits, alpha, replace(state, self_k=tuple(keys), self_v=tuple(values))

    # ---- the step ------------------------------------------------------------------------------

    def init_state(self, features: torch.Tensor) -> TransformerState:
        """features (B, P, C) -> the state before the first word, one row per image: every
        layer's cross-attention keys and values (B, H, P, dh), and empty self-attention caches
        (B, H, 0, dh)."""
        memory = self.memory(features)
        cross = [layer.memory_kv(memory) for layer in self.layers]
        B, H, dh = features.shape[0], self.num_heads, self.d_model // self.num_heads
        empty = memory.new_empty(B, H, 0, dh)
        return TransformerState(
            cross_k=tuple(k for k, _ in cross),
            cross_v=tuple(v for _, v in cross),
            self_k=(empty,) * len(self.layers),
            self_v=(empty,) * len(self.layers),
        )

    def step(
        self, prev_tokens: torch.Tensor, state: TransformerState
    ) -> tuple[torch.Tensor, torch.Tensor, TransformerState]:
        """prev_tokens (N,) long -> logits (N, V) for the next word, alpha (N, P) the last
        layer's cross-attention averaged over heads, and the state one position longer."""
        x = self.embed(prev_tokens.unsqueeze(1), state.length)  # (N, 1, d)
        logits, alpha, state = self.run_layers(x, state, want_alpha=True)
        return logits[:, 0], alpha[:, 0], state

    # ---- training ------------------------------------------------------------------------------

    def forward(
        self,
        features: torch.Tensor,
        captions: torch.Tensor,
        lengths: torch.Tensor | None = None,
        teacher_forcing_ratio: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, None]:
        """Predict ``captions[:, 1:]`` from inputs ``captions[:, :-1]``, all positions at once
        under a causal mask.

        Args:
            features: (B, P, C) encoder output.
            captions: (B, T) long, ``[<start>, w1, ..., <end>, <pad>...]``.
            lengths: unused: a position never sees later ones, so padding after a caption's end
                changes none of its logits, and the logits at padded positions are ignored by
                the loss.
            teacher_forcing_ratio: must be 1 (no scheduled sampling: that is an LSTM feature).
            generator: unused.

        Returns:
            logits (B, T-1, V) and ``None`` for the alphas: cross-attention spreads over heads
            and layers, so the doubly stochastic attention penalty of the xe objective, made for
            one attention map per step, does not apply and is skipped.
        """
        if teacher_forcing_ratio < 1.0:
            raise ConfigError(
                f"model.teacher_forcing_ratio={teacher_forcing_ratio}: scheduled sampling is an "
                "LSTM feature; set model.teacher_forcing_ratio=1.0 (and "
                "model.teacher_forcing_schedule=null) for the transformer decoder"
            )
        inputs = captions[:, :-1]  # (B, T-1)
        if inputs.shape[1] == 0:
            return features.new_zeros(captions.shape[0], 0, self.vocab_size), None
        state = self.init_state(features)
        logits, _, _ = self.run_layers(self.embed(inputs, 0), state, want_alpha=False)
        return logits, None
