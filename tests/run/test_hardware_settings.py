"""Settings that follow the machine: precision, loader workers, GPU-only speed-ups that must stay
out of the way on a CPU, and the fixed-shape unroll end to end."""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf

from imgcap.data.datamodule import resolve_num_workers
from imgcap.errors import ConfigError
from imgcap.run import tasks
from imgcap.run.hardware import precision_for
from tests.support.hydra_helpers import compose_train
from tests.support.runs import TINY


def test_precision_follows_the_accelerator(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert precision_for("cpu") == precision_for("auto") == precision_for("gpu") == "32-true"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert precision_for("gpu") == precision_for("auto") == "bf16-mixed"
    assert precision_for("cpu") == "32-true"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert precision_for("cuda") == "16-mixed"


@pytest.mark.parametrize("trainer", ["default", "cpu", "gpu", "ddp"])
def test_trainer_configs_resolve_their_precision(trainer, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    cfg = compose_train(tmp_path, [f"trainer={trainer}"])
    expected = "32-true" if trainer == "cpu" else "bf16-mixed"
    assert OmegaConf.to_container(cfg.trainer, resolve=True)["precision"] == expected


def test_num_workers_auto_fits_the_machine(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)))
    assert resolve_num_workers("auto") == 8
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1})
    assert resolve_num_workers("auto") == 1
    assert resolve_num_workers(3) == 3 and resolve_num_workers("0") == 0
    for bad in (-1, "many"):
        with pytest.raises(ConfigError, match="data.num_workers"):
            resolve_num_workers(bad)


@pytest.mark.parametrize("unroll", ["fixed", "shrink"])
def test_training_runs_with_either_unroll_on_cpu(unroll, tmp_path):
    cfg = compose_train(
        tmp_path,
        [
            *TINY,
            f"model.decoder.unroll={unroll}",
            "model.cuda_graphs=true",
            "trainer.max_epochs=2",
            "logger=none",
        ],
    )
    tasks.train(cfg)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["test/BLEU-1"] > 0  # it learned something and decoded captions
    ckpt = torch.load(metrics["best_checkpoint"], map_location="cpu", weights_only=False)
    assert ckpt["hyper_parameters"]["decoder"]["unroll"] == unroll


def test_gpu_speed_ups_stay_off_on_cpu(tmp_path):
    from imgcap.captioning_module import CaptioningModule

    model = CaptioningModule(
        ["<pad>", "<start>", "<end>", "<unk>", "a"],
        encoder={"arch": "small_cnn", "weights": None, "fine_tune": "all", "width": 8},
        encoded_size=2,
        decoder={"name": "lstm_attention", "attention_dim": 8, "embed_dim": 8, "decoder_dim": 8},
        cuda_graphs=True,
        channels_last=True,
    )
    model.on_fit_start()  # on the CPU: nothing to switch on, even when asked for
    assert model.decoder.fixed_runner is None and not model._channels_last
    conv = next(m for m in model.encoder.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous()


def test_speed_switches_reject_unknown_values():
    from imgcap.captioning_module import CaptioningModule

    with pytest.raises(ConfigError, match="model.cuda_graphs"):
        CaptioningModule(
            ["<pad>", "<start>", "<end>", "<unk>"],
            encoder={"arch": "small_cnn", "weights": None},
            cuda_graphs="sometimes",
        )
