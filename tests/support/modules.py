"""A CaptioningModule sized for tests: small CNN from scratch, narrow LSTM decoder, no METEOR."""

from __future__ import annotations

import torch

from imgcap.captioning_module import CaptioningModule
from imgcap.vocab import Vocabulary


def small_module(vocab: Vocabulary, **overrides) -> CaptioningModule:
    """64-wide encoder, decoder of 64 (attention, embedding) and 128 (LSTM); ``overrides`` win."""
    settings = dict(
        vocab=vocab.itos,
        encoder={"arch": "small_cnn", "weights": None, "fine_tune": "all", "width": 64, "lr": 2e-3},
        decoder={
            "name": "lstm_attention",
            "attention_dim": 64,
            "embed_dim": 64,
            "decoder_dim": 128,
            "dropout": 0.0,
        },
        encoded_size=2,
        meteor=False,
        optimizer=lambda params: torch.optim.Adam(params, lr=3e-3),
    )
    settings.update(overrides)
    return CaptioningModule(**settings)
