"""Which validations add METEOR (model.val_meteor), with the fast scorers every epoch."""

from __future__ import annotations

import lightning.pytorch as L
import pytest
import torch
from torch.utils.data import DataLoader

from imgcap.errors import ConfigError
from imgcap.metrics import scorers as metrics_scorers
from imgcap.run.checks import check_train_config
from imgcap.vocab import Vocabulary
from tests.support.hydra_helpers import compose_train
from tests.support.modules import small_module
from tests.support.trainers import quiet_cpu_trainer

CAPTIONS = ["a red circle on the left", "a blue square at the top", "a green circle below"]


def _batches() -> tuple[dict, dict, Vocabulary]:
    vocab_captions = [c.split() for c in CAPTIONS]
    vocab = Vocabulary.build(CAPTIONS, min_word_freq=1)
    images = torch.randn(3, 3, 32, 32)  # (B, 3, H, W)
    tokens = [vocab.encode(c) for c in CAPTIONS]
    width = max(len(t) for t in tokens)
    captions = torch.tensor([t + [0] * (width - len(t)) for t in tokens])  # (B, T)
    lengths = torch.tensor([len(t) for t in tokens])
    train = {
        "images": images,
        "captions": captions,
        "lengths": lengths,
        "references": [[c] for c in CAPTIONS],
        "image_ids": [f"im{i}" for i in range(3)],
    }
    val = {
        "images": images,
        "references": [
            [c, " ".join(reversed(w))] for c, w in zip(CAPTIONS, vocab_captions, strict=True)
        ],
        "image_ids": [f"im{i}" for i in range(3)],
    }
    return train, val, vocab


@pytest.fixture
def meteor_calls(monkeypatch):
    """METEOR as if Java were there, without starting its JVM: records each call's size."""
    calls: list[int] = []

    def fake_meteor(gts, res):
        calls.append(len(gts))
        return 0.25

    monkeypatch.setattr(metrics_scorers, "meteor_score", fake_meteor)
    monkeypatch.setattr(metrics_scorers, "java_available", lambda: True)
    return calls


class _ValScores(L.Callback):
    """The val scores of each validation (sanity check included), in order."""

    def __init__(self) -> None:
        self.seen: list[tuple[bool, dict[str, float]]] = []

    def on_validation_end(self, trainer, pl_module) -> None:
        self.seen.append((trainer.sanity_checking, dict(pl_module.latest_scores["val"])))


def _fit(val_meteor: str, meteor: bool = True, epochs: int = 3, test: bool = False):
    torch.manual_seed(0)
    train, val, vocab = _batches()
    model = small_module(vocab, meteor=meteor, val_meteor=val_meteor)
    scores = _ValScores()
    trainer = quiet_cpu_trainer(max_epochs=epochs, num_sanity_val_steps=1, callbacks=[scores])
    loader = lambda batch: DataLoader([batch], batch_size=None)  # noqa: E731
    trainer.fit(model, train_dataloaders=loader(train), val_dataloaders=loader(val))
    if test:
        trainer.test(model, dataloaders=loader(val), verbose=False)
    return model, scores.seen


def _with_meteor(seen: list[tuple[bool, dict[str, float]]]) -> list[bool]:
    return ["METEOR" in s for _sanity, s in seen]


def test_val_meteor_last_scores_meteor_in_the_final_validation_only(meteor_calls):
    model, seen = _fit("last", test=True)
    assert [sanity for sanity, _ in seen] == [True, False, False, False]
    assert _with_meteor(seen) == [False, False, False, True]
    for _sanity, s in seen:  # the fast scorers run at every validation
        assert {"BLEU-1", "BLEU-4", "ROUGE-L", "CIDEr"} <= set(s)
    # The test scores keep METEOR (model.meteor) and come from pycocoevalcap.
    assert model.latest_scores["test"]["METEOR"] == 0.25
    assert meteor_calls == [3, 3]
    assert model.val_metric.backend == "fast" and model.test_metric.backend == "pycocoevalcap"


def test_val_meteor_every_scores_meteor_at_each_validation(meteor_calls):
    _model, seen = _fit("every", epochs=2)
    assert _with_meteor(seen) == [True, True, True]
    assert seen[-1][1]["METEOR"] == 0.25 and len(meteor_calls) == 3


def test_val_meteor_never_and_meteor_off(meteor_calls):
    _model, seen = _fit("never", epochs=2)
    assert _with_meteor(seen) == [False, False, False]
    _model, seen = _fit("every", meteor=False, epochs=2, test=True)
    assert _with_meteor(seen) == [False, False, False]
    assert meteor_calls == []


def test_standalone_validate_counts_as_the_last(meteor_calls):
    torch.manual_seed(0)
    _train, val, vocab = _batches()
    model = small_module(vocab, meteor=True, val_meteor="last")
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    trainer.validate(model, dataloaders=DataLoader([val], batch_size=None), verbose=False)
    assert model.latest_scores["val"]["METEOR"] == 0.25


def test_bad_val_meteor_is_one_clear_error():
    _train, _val, vocab = _batches()
    with pytest.raises(ConfigError, match=r"model.val_meteor must be one of every, last, never"):
        small_module(vocab, val_meteor="sometimes")


def test_bad_val_meteor_is_refused_before_any_work(tmp_path):
    cfg = compose_train(tmp_path, ["model.val_meteor=sometimes"])
    with pytest.raises(ConfigError, match=r"^model.val_meteor='sometimes' must be one of every"):
        check_train_config(cfg)
    check_train_config(compose_train(tmp_path, ["model.val_meteor=every"]))
