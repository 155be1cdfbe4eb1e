"""Training settings shared by the end-to-end tests: TINY (a run in seconds) and EXACT (TINY
made deterministic, for runs compared to the last digit), and how such runs are compared."""

from __future__ import annotations

import json
from pathlib import Path

# A tiny, fast configuration: 60 shapes at 32 px, small CNN, narrow decoder, no METEOR (Java).
TINY = [
    "data=shapes",
    "data.synthetic.num_images=60",
    "data.synthetic.image_size=32",
    "data.image_size=32",
    "data.batch_size=16",
    "model.encoder.arch=small_cnn",
    "model.encoder.weights=null",
    "model.encoder.fine_tune=all",
    "++model.encoder.width=32",
    "model.encoded_size=2",
    "model.decoder.attention_dim=32",
    "model.decoder.embed_dim=32",
    "model.decoder.decoder_dim=32",
    "model.meteor=false",
    "trainer=cpu",
    "trainer.num_sanity_val_steps=0",
    "callbacks.progress_bar=null",
]

# TINY for three deterministic epochs with every source of randomness in play (dropout,
# scheduled sampling), and a digest of the final weights beside metrics.json.
EXACT = [
    *TINY,
    "trainer.max_epochs=3",
    "trainer.deterministic=true",
    "logger=none",
    "data.eval_batch_size=2",
    "model.teacher_forcing_ratio=0.8",
    "model.decoder.dropout=0.3",
    "model.optimizer.lr=0.01",
    "model.encoder.lr=0.01",
    "monitor=val/BLEU-1",
    "+callbacks.digest._target_=tests.support.callbacks.WeightsDigest",
]


def run_metrics(run: Path) -> tuple[dict, str]:
    """A run's metrics.json without what differs between equal runs, and its weights digest."""
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("best_checkpoint", "caption_file", "split_file"):  # paths of the run's own
        metrics.pop(key)  # folders (the compared runs sit in different ones)
    metrics.pop("timings", None)  # wall-clock seconds per phase: never equal between two runs
    # where the run came from (its overrides, its resumes): compared runs differ there on purpose
    metrics.pop("provenance", None)
    return metrics, (run / "weights.sha256").read_text()
