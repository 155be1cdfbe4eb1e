"""The frozen-encoder feature cache."""

from __future__ import annotations

import os
import shutil
from functools import partial
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

from imgcap.data.cache_location import dataset_identity
from imgcap.data.datamodule import CaptionDataModule
from imgcap.data.feature_cache import (
    build_feature_cache,
    cache_key,
    load_feature_cache,
    paths_for,
)
from imgcap.data.transforms import eval_transform, load_image
from tests.support.data_helpers import small_datamodule
from tests.support.trainers import quiet_cpu_trainer


class CountingEncoder(nn.Module):
    """(B, 3, S, S) -> (B, P=grid^2, C=4), counting forward calls."""

    def __init__(self, grid: int = 2):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(grid)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.pool(self.conv(x)).flatten(2).transpose(1, 2)  # (B, P, C)


def make_dm(root: Path, cache_dir: Path, encoder: nn.Module, key: dict) -> CaptionDataModule:
    dm = small_datamodule(root, cache_dir, cache_features=True)
    dm.prepare_vocabulary()  # vocabulary first (the task sizes the model from it) ...
    dm.attach_feature_encoder(encoder, key)
    dm.setup("fit")  # ... then the cache
    dm.wait_for_cache_files()  # kept in memory, written in the background: let it finish
    return dm


def test_features_equal_encoder_output_and_epochs_skip_encoder(
    shapes_root: Path, tmp_path: Path
) -> None:
    enc = CountingEncoder()
    dm = make_dm(shapes_root, tmp_path / "cache", enc, {"arch": "counting", "grid": 2})
    assert enc.calls > 0  # built train + val caches
    enc.calls = 0
    for _ in range(2):
        for batch in dm.train_dataloader():
            assert "images" not in batch
            assert (
                batch["features"].shape[1:] == (4, 4) and batch["features"].dtype == torch.float32
            )
    val = next(iter(dm.val_dataloader()))
    assert enc.calls == 0

    name = val["image_ids"][0]
    image = eval_transform(32)(load_image(dm.annotations.image_dir / name))
    with torch.no_grad():
        expected = enc(image[None])[0]
    torch.testing.assert_close(val["features"][0], expected, atol=2e-3, rtol=2e-3)


def test_changed_encoder_config_rebuilds(shapes_root: Path, tmp_path: Path) -> None:
    enc = CountingEncoder()
    make_dm(shapes_root, tmp_path, enc, {"arch": "counting", "grid": 2})
    enc.calls = 0
    make_dm(shapes_root, tmp_path, enc, {"arch": "counting", "grid": 2})
    assert enc.calls == 0  # same key: loaded, not recomputed
    enc3 = CountingEncoder(grid=3)
    dm = make_dm(shapes_root, tmp_path, enc3, {"arch": "counting", "grid": 3})
    assert enc3.calls > 0
    assert next(iter(dm.train_dataloader()))["features"].shape[1:] == (9, 4)
    assert len(list(tmp_path.glob("features-*.npy"))) == 4  # (train, val) x two configs


def test_mismatched_cache_is_not_used(shapes_root: Path, tmp_path: Path) -> None:
    dm = make_dm(shapes_root, tmp_path, CountingEncoder(), {"arch": "counting", "grid": 2})
    ids = dm.annotations.splits["val"]
    ds = dataset_identity(dm.annotations.image_dir, ids)
    key_a, key_b = {"arch": "counting", "grid": 2}, {"arch": "counting", "grid": 3}
    assert load_feature_cache(tmp_path, ids, key_a, 32, dataset=ds) is not None
    # Plant config A's files under config B's names: the stored key must give it away.
    src = paths_for(tmp_path, cache_key(ids, key_a, 32, ds))
    dst = paths_for(tmp_path, cache_key(ids, key_b, 32, ds))
    for s, d in zip(src, dst, strict=True):
        shutil.copy(s, d)
    assert load_feature_cache(tmp_path, ids, key_b, 32, dataset=ds) is None
    assert load_feature_cache(tmp_path, ids, key_a, 64, dataset=ds) is None  # other image size
    assert load_feature_cache(tmp_path, ids[:-1], key_a, 32, dataset=ds) is None  # other images
    # The same ids and config in another dataset (folder or files) is another cache.
    assert load_feature_cache(tmp_path, ids, key_a, 32) is None
    other = {**ds, "image_dir": "/elsewhere"}
    assert load_feature_cache(tmp_path, ids, key_a, 32, dataset=other) is None
    # A truncated/partial array under the right key is not trusted either.
    npy, _ = src
    npy.write_bytes(npy.read_bytes()[:-16])
    assert load_feature_cache(tmp_path, ids, key_a, 32, dataset=ds) is None


def test_same_file_names_in_two_datasets_share_a_cache_folder_safely(
    shapes_root: Path, tmp_path: Path
) -> None:
    """Two datasets with the same image names but other pixels, one cache folder: each gets
    features of its own images (the key carries the dataset's folder and files)."""
    twin = tmp_path / "twin"
    shutil.copytree(shapes_root, twin)
    for image in (twin / "Images").iterdir():  # same names, inverted pixels
        inverted = Image.eval(Image.open(image).convert("RGB"), lambda v: 255 - v)
        inverted.save(image)
    key = {"arch": "counting", "grid": 2}
    cache = tmp_path / "cache"
    first = make_dm(shapes_root, cache, CountingEncoder(), key)
    second = make_dm(twin, cache, CountingEncoder(), key)
    name = first.annotations.splits["val"][0]
    a = first.datasets["val"][0]
    b = second.datasets["val"][0]
    assert first.annotations.splits["val"][0] == second.annotations.splits["val"][0] == name
    assert not torch.allclose(a["features"], b["features"])
    assert len(list(cache.glob("features-*.npy"))) == 4  # (train, val) x two datasets
    assert not (shapes_root / ".imgcap_cache").exists() and not (twin / ".imgcap_cache").exists()


def test_cache_features_without_encoder_is_a_config_error(
    shapes_root: Path, tmp_path: Path
) -> None:
    from imgcap.errors import ConfigError

    dm = CaptionDataModule(
        root=str(shapes_root),
        cache_dir=str(tmp_path),
        image_size=32,
        min_word_freq=1,
        cache_features=True,
        quiet=True,
    )
    dm.vocabulary()
    assert dm.vocab is not None
    with pytest.raises(ConfigError, match="attach_feature_encoder"):
        dm.train_dataloader()


# ---- the build path used on accelerators ------------------------------------------------------
def _train_images(root: Path, size: int):
    from imgcap.data.annotations import load_annotations
    from imgcap.data.datasets import ImageFiles, ImageListDataset

    ids = load_annotations(root, 0).splits["train"]
    return ids, ImageListDataset(ids, ImageFiles(root / "Images", eval_transform(size)))


def test_half_precision_build_agrees_with_float32_to_float16_tolerance(
    shapes_root: Path, tmp_path: Path
) -> None:
    # On CUDA the cache is computed under float16 autocast; here the same dtype path runs on the
    # CPU, against the float32 path a CPU build takes. A ResNet-18 gives a realistic depth.
    from imgcap.encoders import build_encoder

    ids, images = _train_images(shapes_root, 32)
    enc = build_encoder(arch="resnet18", weights=None, encoded_size=2, fine_tune="frozen")
    key = {"arch": "resnet18", "grid": 2}
    stores = {
        dtype: build_feature_cache(
            tmp_path / str(dtype),
            ids,
            images,
            enc,
            key,
            32,
            batch_size=16,
            quiet=True,
            autocast_dtype=dtype,
        )
        for dtype in (None, torch.float16)
    }
    full, half = (torch.from_numpy(stores[d].array[:].astype("float32")) for d in stores)
    assert full.abs().max() > 1.0  # the comparison is not between near-zero values
    torch.testing.assert_close(half, full, atol=2e-3, rtol=2e-3)  # about two float16 steps


def test_building_the_cache_leaves_the_training_rng_alone(
    shapes_root: Path, tmp_path: Path
) -> None:
    ids, images = _train_images(shapes_root, 32)
    enc = CountingEncoder()
    enc.train()
    torch.manual_seed(123)
    before = torch.get_rng_state()
    build_feature_cache(tmp_path, ids, images, enc, {"arch": "counting"}, 32, quiet=True)
    assert enc.calls > 0 and enc.training  # it ran, and the encoder's mode came back
    assert torch.equal(torch.get_rng_state(), before)


class _PidRecorder:
    """Forward hook appending the process id to a file (picklable for spawned processes)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self, *args) -> None:
        with open(self.path, "a") as f:
            f.write(f"{os.getpid()}\n")


@pytest.mark.slow
def test_ddp_builds_the_cache_once_and_every_rank_reads_it(
    shapes_root: Path, tmp_path: Path
) -> None:

    from imgcap.captioning_module import CaptioningModule

    dm = small_datamodule(shapes_root, tmp_path / "cache", cache_features=True)
    dm.prepare_data()
    dm.vocabulary()
    model = CaptioningModule(
        dm.vocab.itos,
        encoder={"arch": "small_cnn", "weights": None, "fine_tune": "frozen", "width": 8},
        decoder={"name": "lstm_attention", "attention_dim": 8, "embed_dim": 8, "decoder_dim": 8},
        encoded_size=2,
        meteor=False,
        optimizer=partial(torch.optim.Adam, lr=1e-3),
    )
    dm.attach_feature_encoder(model.encoder, {**model.encoder.cache_key(), "image_size": 32})
    pids = tmp_path / "encoder_pids.txt"
    model.encoder.register_forward_hook(_PidRecorder(pids))
    trainer = quiet_cpu_trainer(
        devices=2,
        strategy="ddp_spawn",
        max_epochs=1,
        limit_train_batches=2,
        limit_val_batches=1,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule=dm)
    calls = pids.read_text().split()
    assert len(set(calls)) == 1, "more than one process ran the encoder"
    assert calls[0] != str(os.getpid())  # it ran inside the Trainer's rank-zero process
    assert len(list((tmp_path / "cache").glob("features-*.npy"))) == 2  # train + val, once each
