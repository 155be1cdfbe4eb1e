"""Cached features held in memory (data.resident): the batches equal the per-item loader's, the
order resumes exactly, the placement choice and its one log line."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from torch import nn

from imgcap.data.resident import (
    IndexBatches,
    ResidentEvalBatches,
    ResidentTrainBatches,
    choose_placement,
)
from imgcap.data.sampler import ResumableSampler
from imgcap.errors import ConfigError
from tests.support.data_helpers import small_datamodule

GB = 10**9


class GridEncoder(nn.Module):
    """(B, 3, S, S) -> (B, P=4, C=6); fixed random weights."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 6, 3, stride=2, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.conv(x)).flatten(2).transpose(1, 2)


def cached_dm(root: Path, cache_dir: Path, resident: str, **overrides):
    dm = small_datamodule(root, cache_dir, cache_features=True, resident=resident, **overrides)
    dm.prepare_vocabulary()
    dm.attach_feature_encoder(GridEncoder(), {"arch": "grid"})
    dm.setup("fit")
    return dm


def assert_same_batch(a: dict, b: dict) -> None:
    assert list(a) == list(b)  # the same keys, in the same order
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, key
            assert torch.equal(a[key].cpu(), b[key].cpu()), key
        else:
            assert a[key] == b[key], key


@pytest.mark.parametrize("captions_per_image", ["all", 1])
def test_resident_batches_equal_the_loader_batches(
    shapes_root: Path, tmp_path: Path, captions_per_image
) -> None:
    off = cached_dm(shapes_root, tmp_path, "off", captions_per_image=captions_per_image)
    held = cached_dm(shapes_root, tmp_path, "host", captions_per_image=captions_per_image)
    assert isinstance(held.datasets["train"], ResidentTrainBatches)
    assert isinstance(held.datasets["val"], ResidentEvalBatches)
    assert held.stores["train"].resident.dtype == torch.float16
    loaders = off.train_dataloader(), held.train_dataloader()
    assert len(loaders[0]) == len(loaders[1])
    for epoch in range(3):  # shuffled, another order every epoch
        orders = []
        for loader in loaders:
            loader.sampler.set_epoch(epoch)  # as Lightning does before every epoch
            orders.append(list(loader))
        assert len(orders[0]) == len(orders[1]) == len(loaders[0])
        for a, b in zip(*orders, strict=True):
            assert_same_batch(a, b)
        if epoch == 0:
            first = [b["image_ids"] for b in orders[0]]
        elif epoch == 1:
            assert [b["image_ids"] for b in orders[0]] != first  # the order did change
    for a, b in zip(off.val_dataloader(), held.val_dataloader(), strict=True):
        assert_same_batch(a, b)


def test_resident_order_resumes_mid_epoch(shapes_root: Path, tmp_path: Path) -> None:
    dm = cached_dm(shapes_root, tmp_path, "host")
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(2)
    full = list(loader)
    # What a checkpoint taken after two batches of epoch 2 restores:
    resumed = cached_dm(shapes_root, tmp_path, "host")
    resumed.load_state_dict({"epoch": 2, "position": 2 * dm.batch_size})
    rest = list(resumed.train_dataloader())
    assert len(rest) == len(full) - 2
    for a, b in zip(full[2:], rest, strict=True):
        assert_same_batch(a, b)


def test_index_batches_cut_the_sampler_order() -> None:
    sampler = ResumableSampler(10, seed=3, captions_per_item=[2] * 10)
    batches = list(IndexBatches(10, 4, sampler))
    assert [len(b) for b in batches] == [4, 4, 2]
    assert [tuple(p) for b in batches for p in b.tolist()] == sampler.order()
    sampler.resume_at(0, 4)
    assert torch.equal(torch.cat(list(IndexBatches(10, 4, sampler))), torch.cat(batches[1:]))
    assert torch.equal(torch.cat(list(IndexBatches(5, 2))), torch.arange(5))


@pytest.mark.parametrize(
    ("mode", "device", "device_free", "host_free", "chosen", "where"),
    [
        ("auto", "cuda:0", 80 * GB, 100 * GB, "device", "on cuda:0"),
        ("auto", "cuda:0", 8 * GB, 100 * GB, "host", "in pinned host memory"),
        ("auto", "cuda:0", 8 * GB, 8 * GB, "off", "on disk"),
        ("auto", "cpu", 0, 100 * GB, "host", "in host memory"),
        ("auto", "cpu", 0, 8 * GB, "off", "on disk"),
        ("host", "cpu", 0, 0, "host", "in host memory"),
        ("off", "cuda:0", 80 * GB, 100 * GB, "off", "on disk"),
        ("device", "cpu", 0, 0, "device", "on cpu"),
    ],
)
def test_resident_choices(mode, device, device_free, host_free, chosen, where) -> None:
    placement, line = choose_placement(
        mode, 6 * GB, torch.device(device), device_free=device_free, host_free=host_free
    )
    assert placement.mode == chosen
    assert where in line and "6.0 GB" in line and "\n" not in line
    if chosen == "device":
        assert placement.keep_on == torch.device(device)
    elif chosen == "host":
        assert placement.keep_on == torch.device("cpu")
        assert placement.pin == (device.startswith("cuda"))
    else:
        assert placement.keep_on is None
    assert line.startswith("data.resident=auto chose" if mode == "auto" else "data.resident ")


def test_resident_device_that_does_not_fit_is_one_clear_error() -> None:
    with pytest.raises(ConfigError, match="data.resident=host or auto"):
        choose_placement("device", 6 * GB, torch.device("cuda:0"), device_free=2 * GB)
    with pytest.raises(ConfigError, match="data.resident must be one of"):
        small_datamodule(Path("."), Path("."), resident="gpu")


def test_auto_says_what_it_chose_in_one_log_line(shapes_root: Path, tmp_path: Path, caplog):
    with caplog.at_level(logging.INFO, logger="imgcap.data.feature_stores"):
        dm = cached_dm(shapes_root, tmp_path, "auto")
        list(dm.val_dataloader())
        dm.setup("test")
    lines = [r.getMessage() for r in caplog.records if "data.resident" in r.getMessage()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("data.resident=auto chose host: cached features")
    assert isinstance(dm.datasets["test"], ResidentEvalBatches)


def test_off_keeps_the_per_item_loader(shapes_root: Path, tmp_path: Path) -> None:
    dm = cached_dm(shapes_root, tmp_path, "off")
    assert not isinstance(dm.datasets["train"], ResidentTrainBatches)
    assert dm.stores["train"].resident is None
    assert dm.train_dataloader().batch_size == dm.batch_size


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("resident", ["device", "host"])
def test_resident_on_cuda_gives_the_loader_values(shapes_root, tmp_path, resident) -> None:
    cuda = torch.device("cuda", torch.cuda.current_device())

    def on_cuda(mode: str):  # without a Trainer the cache is built where the encoder is
        dm = small_datamodule(shapes_root, tmp_path, cache_features=True, resident=mode)
        dm.prepare_vocabulary()
        dm.attach_feature_encoder(GridEncoder().to(cuda), {"arch": "grid"})
        dm.setup("fit")
        return dm

    off, held = on_cuda("off"), on_cuda(resident)
    store = held.stores["train"]
    assert store.resident.device.type == ("cuda" if resident == "device" else "cpu")
    assert store.resident.is_pinned() == (resident == "host")
    loaders = off.train_dataloader(), held.train_dataloader()
    for epoch in range(2):
        for loader in loaders:
            loader.sampler.set_epoch(epoch)
        for a, b in zip(*loaders, strict=True):
            assert b["features"].device.type == "cuda" and b["captions"].device.type == "cuda"
            assert_same_batch(a, b)


# ---------------------------------------------------------------------------- whole runs
CACHED = ["data.cache_features=true", "model.encoder.fine_tune=frozen"]


def _train(tmp: Path, resident: str, extra: tuple[str, ...] = ()) -> Path:
    from imgcap.run import tasks
    from tests.support.hydra_helpers import compose_train
    from tests.support.runs import EXACT

    cfg = compose_train(tmp, [*EXACT, *CACHED, f"data.resident={resident}", *extra])
    tasks.train(cfg)
    return Path(cfg.paths.output_dir)


@pytest.fixture(scope="module")
def resident_run(tmp_path_factory) -> tuple[dict, str]:
    from tests.support.runs import run_metrics

    return run_metrics(_train(tmp_path_factory.mktemp("resident"), "host"))


@pytest.mark.slow
def test_resident_and_loader_training_are_identical(resident_run, tmp_path) -> None:
    from tests.support.runs import run_metrics

    metrics, weights = run_metrics(_train(tmp_path, "off"))
    assert metrics == resident_run[0]  # every score, to the last digit
    assert weights == resident_run[1]  # the same final weights, bit for bit


@pytest.mark.slow
def test_resident_run_interrupted_mid_epoch_resumes_exactly(resident_run, tmp_path) -> None:
    import signal

    from imgcap.run import tasks
    from tests.support.callbacks import signal_at
    from tests.support.hydra_helpers import compose_train
    from tests.support.runs import run_metrics

    with pytest.raises(SystemExit) as stopped:
        _train(tmp_path / "first", "host", tuple(signal_at("train", 1, 1, signal.SIGTERM)))
    assert stopped.value.code == 128 + signal.SIGTERM
    run = tmp_path / "first" / "run"
    saved = run / "checkpoints" / "on_exception.ckpt"
    assert torch.load(saved, map_location="cpu", weights_only=True)["epoch"] == 1
    tasks.train(compose_train(tmp_path / "second", [f"ckpt_path={saved}"]))
    metrics, weights = run_metrics(run)
    assert metrics == resident_run[0]
    assert weights == resident_run[1]


@pytest.mark.parametrize("captions_per_image", ["all", 1])
def test_resident_items_equal_the_per_item_dataset(shapes_root, tmp_path, captions_per_image):
    off = cached_dm(shapes_root, tmp_path, "off", captions_per_image=captions_per_image)
    held = cached_dm(shapes_root, tmp_path, "host", captions_per_image=captions_per_image)
    for split in ("train", "val"):
        a, b = off.datasets[split], held.datasets[split]
        assert len(a) == len(b)
        for k in range(len(a)):
            torch.manual_seed(k)  # the same random caption draw with one caption per image
            x = a[k]
            torch.manual_seed(k)
            assert_same_batch(x, b[k])
