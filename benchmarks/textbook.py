"""The textbook Show-Attend-Tell training loop, kept only as the speed baseline.

This is how the widely copied tutorials write the teacher-forced decoder: sort by length, then
for each step t run the captions still going (a shrinking batch), recompute the attention
projection ``W_e e`` of the encoder output at every step, and apply the output layer per step.
It reads the parameters of an ``AttentionLSTMDecoder`` so that it computes the same function:
the benchmark asserts that its loss equals imgcap's before timing anything.
"""

from __future__ import annotations

import torch

from imgcap.decoders.lstm_attention import AttentionLSTMDecoder


def textbook_forward(
    dec: AttentionLSTMDecoder, features: torch.Tensor, captions: torch.Tensor, lengths: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """features (B, P, C), captions (B, T), lengths (B,) -> logits (B, T-1, V), alphas (B, T-1, P)
    in the input order, zero at padded positions (the same contract as ``dec.forward``)."""
    B, T = captions.shape
    P = features.shape[1]
    dec_len, order = (lengths - 1).clamp(0, T - 1).sort(descending=True)
    features, captions = features[order], captions[order]
    dec_len = dec_len.tolist()
    mean = features.mean(dim=1)
    h, c = dec.init_h(mean), dec.init_c(mean)
    emb = dec.embedding(captions)  # (B, T, E)
    logits = features.new_zeros(B, T - 1, dec.vocab_size)
    alphas = features.new_zeros(B, T - 1, P)
    att = dec.attention
    for t in range(max(dec_len, default=0)):
        bt = sum(n > t for n in dec_len)
        enc_att = att.encoder_proj(features[:bt])  # recomputed at every step
        hidden = torch.tanh(enc_att + att.decoder_proj(h[:bt]).unsqueeze(1))
        alpha = att.score(hidden).squeeze(2).softmax(dim=1)  # (bt, P)
        context = (features[:bt] * alpha.unsqueeze(2)).sum(dim=1)  # (bt, C)
        z = torch.sigmoid(dec.f_beta(h[:bt])) * context
        h, c = dec.lstm(torch.cat([emb[:bt, t], z], dim=1), (h[:bt], c[:bt]))
        logits[:bt, t] = dec.output_logits(h, z, emb[:bt, t])  # output layer per step
        alphas[:bt, t] = alpha
    inverse = torch.argsort(order)
    return logits[inverse], alphas[inverse]
