"""LSTM caption decoder with soft attention (Show, Attend and Tell).

Token conventions (see ``imgcap.tokens``): ``<pad>=0 <start>=1 <end>=2 <unk>=3``; a caption
tensor reads ``[<start>, w1, ..., wn, <end>, <pad>, ...]``.

One decoding step, from previous word y_{t-1} and state (h, c):

    context, alpha = attention(W_e e, e, h)                     # (N, C), (N, P)
    z = sigmoid(f_beta(h)) * context                            # gated context (N, C)
    h', c' = LSTMCell([embed(y_{t-1}); z], (h, c))
    logits = out(dropout(h'))                                   # plain output
    logits = out(dropout(embed(y_{t-1}) + L_h h' + L_z z))      # deep output (deep_output=True)

``step`` is that function and everything calls it: greedy decoding and beam search. Teacher-forced
training (``forward``) unrolls the same equations in one of two ways, chosen by ``unroll``:

* ``shrink``: sort by length and run step t on the captions still going only (the rows
  ``[:n_t]``). Least arithmetic; the batch size changes every step and reading the step counts
  costs one host sync. Fastest on the CPU, where arithmetic is the cost.
* ``fixed``: every step runs on the whole (B, ...) batch; padded positions are masked at the end.
  The parts that do not depend on the recurrence are hoisted out of the loop: the embedding half
  of the LSTM input gates for all steps is one matmul, and the three projections of h (attention
  ``W_h h``, gate ``f_beta(h)``, LSTM ``W_hh h``) are one matmul per step. Shapes are static and
  there is no host sync, so the unroll can be captured as a CUDA graph (see ``cuda_graphs.py``):
  on a GPU, where kernel launches rather than arithmetic bound this small recurrence, that is
  what makes it fast.

``auto`` (the default) picks ``fixed`` for CUDA tensors and ``shrink`` elsewhere. Both give the
same logits to float tolerance (tests/decoders/test_decoder_paths.py).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from imgcap.decoders.attention import AdditiveAttention
from imgcap.decoders.contract import gather_rows
from imgcap.decoders.registry import register_decoder
from imgcap.errors import ConfigError
from imgcap.tokens import PAD_ID


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
        )

    def with_hidden(self, h: torch.Tensor, c: torch.Tensor) -> LSTMState:
        return replace(self, h=h, c=c)


UNROLL_MODES = ("auto", "shrink", "fixed")


@register_decoder("lstm_attention")
class AttentionLSTMDecoder(nn.Module):
    """Attention LSTM decoder; see the module docstring for the step equations. Implements the
    decoder contract (:mod:`imgcap.decoders.contract`).

    Attributes mirror the constructor (``vocab_size, encoder_dim, embed_dim, decoder_dim,
    attention_dim, dropout, deep_output, precompute_projection, unroll``). Layers: ``embedding``,
    ``attention`` (``encoder_proj``, ``decoder_proj``, ``score``), ``init_h``, ``init_c``,
    ``f_beta``, ``lstm``, ``drop``, ``out`` and, with deep output, ``deep_h``, ``deep_z``.
    """

    # teacher_forcing_ratio < 1 feeds the decoder's own predictions (see forward_shrinking)
    supports_scheduled_sampling = True

    def __init__(
        self,
        vocab_size: int,
        encoder_dim: int,
        embed_dim: int = 512,
        decoder_dim: int = 512,
        attention_dim: int = 512,
        dropout: float = 0.5,
        deep_output: bool = False,
        precompute_projection: bool = True,
        unroll: str = "auto",
    ):
        super().__init__()
        self.vocab_size = vocab_size
        self.encoder_dim = encoder_dim
        self.embed_dim = embed_dim
        self.decoder_dim = decoder_dim
        self.attention_dim = attention_dim
        self.dropout = dropout
        self.deep_output = deep_output
        # False recomputes W_e e at every step: slower, same results; kept for the benchmark
        self.precompute_projection = precompute_projection
        if unroll not in UNROLL_MODES:
            raise ConfigError(f"model.decoder.unroll must be one of {UNROLL_MODES}, got {unroll!r}")
        self.unroll = unroll
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
        region vector, and the attention projection W_e e (B, P, A) computed once."""
        mean = features.mean(dim=1)  # (N, C)
        projected = self.attention.project(features) if self.precompute_projection else None
        return LSTMState(self.init_h(mean), self.init_c(mean), features, projected)

    def gate(self, h: torch.Tensor) -> torch.Tensor:
        """h (N, D) -> sigmoid(f_beta(h)) (N, C) in (0, 1): how much of the context to let in."""
        return torch.sigmoid(self.f_beta(h))

    def advance(
        self, emb: torch.Tensor, state: LSTMState
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Recurrent half of a step: emb (N, E) of the previous word, N = B * g rows
        -> h, c (N, D), gated context z (N, C), alpha (N, P)."""
        projected = state.projected
        if projected is None:
            projected = self.attention.project(state.features)  # (B, P, A)
        context, alpha = self.attention(projected, state.features, state.h)  # (N, C), (N, P)
        z = self.gate(state.h) * context  # (N, C)
        h, c = self.lstm(torch.cat([emb, z], dim=1), (state.h, state.c))  # (N, D) each
        return h, c, z, alpha

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
        """``forward`` with the shrinking batch (also the scheduled-sampling path)."""
        B, T = captions.shape
        steps = T - 1
        device = captions.device
        if lengths is None:
            dec_len = torch.full((B,), steps, dtype=torch.long, device=device)
        else:
            dec_len = (lengths.to(device=device, dtype=torch.long) - 1).clamp(0, steps)
        # Sort longest first so the captions still running at step t are a prefix of the batch:
        # each step then runs on rows [:n_t] only, and finished captions cost nothing.
        order = None
        if lengths is not None:
            dec_len, order = dec_len.sort(descending=True, stable=True)
            features, captions = features[order], captions[order]
        active = dec_len.unsqueeze(0) > torch.arange(steps, device=device).unsqueeze(1)
        counts = active.sum(1).tolist()  # (T-1,) rows active per step; one host sync

        state = self.init_state(features)
        sampling = teacher_forcing_ratio < 1.0
        if not sampling:
            inputs = self.embedding(captions[:, :-1])  # (B, T-1, E), ground truth at every step
        outs, alphas = [], []  # per step: logits or (h, z, emb) rows, and (n_t, P)
        prev_pred = captions[:, 0]
        for t, n in enumerate(counts):
            if n == 0:
                break
            state = state.prefix(n)
            if not sampling:
                emb = inputs[:n, t]  # (n, E)
            else:
                tokens = captions[:n, t]
                if t > 0:
                    use_pred = (
                        torch.rand(n, device=device, generator=generator) >= teacher_forcing_ratio
                    )
                    tokens = torch.where(use_pred, prev_pred[:n], tokens)
                emb = self.embedding(tokens)  # (n, E)
            h, c, z, alpha = self.advance(emb, state)
            state = state.with_hidden(h, c)
            alphas.append(alpha)
            if sampling:
                logits = self.output_logits(h, z, emb)  # (n, V)
                prev_pred = logits.argmax(-1)  # no gradient flows through the choice
                outs.append(logits)
            else:
                outs.append((h, z, emb))

        if not alphas:  # T == 1 or all lengths <= 1: nothing to predict
            return (
                features.new_zeros(B, steps, self.vocab_size),
                features.new_zeros(B, steps, features.shape[1]),
            )
        if sampling:
            packed_logits = torch.cat(outs)  # (sum n_t, V)
        else:
            # one large output matmul over all steps instead of T-1 small ones
            h_all, z_all, e_all = (torch.cat(x) for x in zip(*outs, strict=True))
            packed_logits = self.output_logits(h_all, z_all, e_all)  # (sum n_t, V)
        packed_alphas = torch.cat(alphas)  # (sum n_t, P)

        # rows are packed step-major, which is the order of the True entries of active (T-1, B)
        logits = packed_logits.new_zeros(steps, B, self.vocab_size)
        logits[active] = packed_logits
        alpha_out = packed_alphas.new_zeros(steps, B, features.shape[1])
        alpha_out[active] = packed_alphas
        logits, alpha_out = logits.transpose(0, 1), alpha_out.transpose(0, 1)  # (B, T-1, ...)
        if order is not None:
            inverse = torch.argsort(order)  # undo the length sort
            logits, alpha_out = logits[inverse], alpha_out[inverse]
        return logits, alpha_out

    def forward_fixed(
        self, features: torch.Tensor, captions: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced ``forward`` with static shapes: every step runs on all B rows.

        features (B, P, C), captions (B, T) long, lengths (B,) long on the captions' device
        -> logits (B, T-1, V), alphas (B, T-1, P), zero after each caption's last step.
        No host sync and no data-dependent branch, so it can be captured as a CUDA graph.
        """
        B, T = captions.shape
        steps = T - 1
        E, A, C = self.embed_dim, self.attention_dim, self.encoder_dim
        state = self.init_state(features)
        projected = state.projected
        if projected is None:
            projected = self.attention.project(features)  # (B, P, A)
        h, c = state.h, state.c

        lstm = self.lstm
        emb = self.embedding(captions[:, :-1])  # (B, T-1, E)
        # The LSTM input is [emb; z]: its emb half (plus both biases) for all steps in one matmul.
        x_gates = F.linear(emb, lstm.weight_ih[:, :E], lstm.bias_ih + lstm.bias_hh)  # (B, T-1, 4D)
        w_z = lstm.weight_ih[:, E:]  # (4D, C)
        # Everything that reads h, in one matmul: [W_h; f_beta; W_hh] h -> (B, A + C + 4D).
        w_h = torch.cat([self.attention.decoder_proj.weight, self.f_beta.weight, lstm.weight_hh])
        b_h = torch.cat(
            [
                self.attention.decoder_proj.bias,
                self.f_beta.bias,
                lstm.bias_hh.new_zeros(4 * h.shape[1]),
            ]
        )
        score = self.attention.score
        hs, zs, alphas = [], [], []
        for t in range(steps):
            att_h, gate_h, hh = F.linear(h, w_h, b_h).split([A, C, 4 * h.shape[1]], dim=1)
            hidden = torch.tanh(projected + att_h.unsqueeze(1))  # (B, P, A)
            alpha = score(hidden).squeeze(-1).softmax(dim=-1)  # (B, P)
            context = torch.bmm(alpha.unsqueeze(1), features).squeeze(1)  # (B, C)
            z = torch.sigmoid(gate_h) * context  # (B, C)
            gates = torch.addmm(x_gates[:, t] + hh, z, w_z.t())  # (B, 4D), order i, f, g, o
            i, f, g, o = gates.chunk(4, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            hs.append(h)
            zs.append(z)
            alphas.append(alpha)
        if steps == 0:
            return (
                features.new_zeros(B, 0, self.vocab_size),
                features.new_zeros(B, 0, features.shape[1]),
            )
        h_all, z_all = torch.stack(hs, 1), torch.stack(zs, 1)  # (B, T-1, D), (B, T-1, C)
        logits = self.output_logits(h_all, z_all, emb)  # (B, T-1, V), one matmul
        # Caption i predicts lengths[i] - 1 tokens; later positions are padding targets.
        active = torch.arange(steps, device=captions.device).unsqueeze(0) < (lengths - 1).unsqueeze(
            1
        )
        mask = active.unsqueeze(-1)  # (B, T-1, 1)
        alpha_all = torch.stack(alphas, 1)  # (B, T-1, P)
        return logits * mask.to(logits.dtype), alpha_all * mask.to(alpha_all.dtype)
