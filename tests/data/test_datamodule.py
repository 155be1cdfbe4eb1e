"""Vocabulary, transforms and the DataModule end to end on generated shapes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from imgcap.data.datamodule import CaptionDataModule
from imgcap.data.transforms import eval_transform, load_image
from imgcap.errors import ConfigError, DataError
from imgcap.vocab import END_ID, PAD_ID, START_ID, UNK_ID, Vocabulary
from tests.support.data_helpers import small_datamodule


def test_vocabulary_round_trip(tmp_path: Path) -> None:
    vocab = Vocabulary.build(["A dog runs.", "a dog sits", "The cat, sits!"], min_word_freq=2)
    assert vocab.itos[:4] == ["<pad>", "<start>", "<end>", "<unk>"]
    assert vocab.itos[4:] == ["a", "dog", "sits"]  # by count, then alphabetical
    ids = vocab.encode("A dog sits on a zebra")
    assert ids[0] == START_ID and ids[-1] == END_ID and ids.count(UNK_ID) == 2
    assert vocab.decode(ids + [PAD_ID]) == "a dog sits <unk> a <unk>"
    vocab.save(tmp_path / "v.json")
    assert Vocabulary.load(tmp_path / "v.json") == vocab


def test_load_image_names_broken_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.jpg"
    Image.new("RGB", (40, 40), (200, 10, 10)).save(path, format="JPEG")
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(DataError, match="broken.jpg"):
        load_image(path)
    with pytest.raises(DataError, match="nothere.jpg"):
        load_image(tmp_path / "nothere.jpg")


def test_eval_transform_shape_and_normalisation() -> None:
    x = eval_transform(24)(Image.new("RGB", (50, 30), (124, 116, 104)))  # ~ImageNet mean colour
    assert x.shape == (3, 24, 24) and x.dtype == torch.float32
    assert x.abs().max() < 0.05


@pytest.mark.parametrize("preload", [False, True])
def test_batches_have_documented_format(shapes_root: Path, tmp_path: Path, preload: bool) -> None:
    dm = small_datamodule(shapes_root, tmp_path, preload=preload, eval_batch_size=3)
    dm.prepare_data()
    dm.setup("fit")
    assert isinstance(dm.vocab, Vocabulary) and 20 < len(dm.vocab) < 44
    assert len(dm.datasets["train"]) == 32 * 5

    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"images", "captions", "lengths", "image_ids", "references"}
    assert batch["images"].shape == (8, 3, 32, 32) and batch["images"].dtype == torch.float32
    caps, lengths = batch["captions"], batch["lengths"]
    assert caps.dtype == torch.int64 and lengths.dtype == torch.int64 and lengths.shape == (8,)
    assert caps.shape[1] == lengths.max()
    for row, n in zip(caps, lengths.tolist(), strict=True):
        assert row[0] == START_ID and row[n - 1] == END_ID and (row[n:] == PAD_ID).all()
    assert len(batch["image_ids"]) == 8 and batch["image_ids"][0].endswith(".jpg")

    val = next(iter(dm.val_dataloader()))
    assert set(val) == {"images", "references", "image_ids"}
    assert val["images"].shape == (3, 3, 32, 32)
    assert len(val["references"]) == 3 and all(
        len(r) == 5 and isinstance(r[0], str) for r in val["references"]
    )
    test = next(iter(dm.test_dataloader()))
    assert test["image_ids"][0] in dm.annotations.splits["test"]


def test_preload_matches_file_decoding(shapes_root: Path, tmp_path: Path) -> None:
    a, b = (
        small_datamodule(shapes_root, tmp_path),
        small_datamodule(shapes_root, tmp_path, preload=True),
    )
    a.setup("validate")
    b.setup("validate")
    torch.testing.assert_close(a.datasets["val"][0]["images"], b.datasets["val"][0]["images"])


def test_one_caption_per_image_truncation_and_workers(shapes_root: Path, tmp_path: Path) -> None:
    dm = small_datamodule(
        shapes_root,
        tmp_path,
        captions_per_image=1,
        max_caption_len=4,
        num_workers=2,
        persistent_workers=True,
        limit_train_images=10,
    )
    dm.setup("fit")
    assert len(dm.datasets["train"]) == 10
    loader = dm.train_dataloader()
    assert loader.persistent_workers and loader.num_workers == 2
    seen = 0
    for batch in loader:
        assert batch["lengths"].max() <= 4
        ends = batch["captions"].gather(1, (batch["lengths"] - 1)[:, None])
        assert (ends == END_ID).all()
        seen += len(batch["image_ids"])
    assert seen == 10
    assert (
        not small_datamodule(shapes_root, tmp_path, num_workers=0, persistent_workers=True)
        .train_dataloader()
        .persistent_workers
    )


def test_vocabulary_is_cached_and_reused(shapes_root: Path, tmp_path: Path) -> None:
    dm = small_datamodule(shapes_root, tmp_path)
    dm.setup("fit")
    path = dm.vocab_path()
    assert path.parent == tmp_path and Vocabulary.load(path) == dm.vocab
    stamp = path.stat().st_mtime_ns
    again = small_datamodule(shapes_root, tmp_path)
    again.setup("fit")
    assert again.vocab == dm.vocab and path.stat().st_mtime_ns == stamp
    other = small_datamodule(shapes_root, tmp_path, min_word_freq=30)
    other.setup("fit")
    assert other.vocab_path() != path and len(other.vocab) < len(dm.vocab)


def test_given_vocabulary_is_not_rebuilt(shapes_root: Path, tmp_path: Path) -> None:
    given = Vocabulary(["a", "red", "circle"])
    dm = small_datamodule(shapes_root, tmp_path)
    dm.vocab = given
    dm.prepare_data()
    dm.setup("fit")
    assert dm.vocab is given
    assert not list(tmp_path.glob("vocab-*.json"))
    batch = next(iter(dm.train_dataloader()))
    assert int(batch["captions"].max()) < len(given)  # encoded with the given ids


def test_synthetic_is_generated_then_reused(tmp_path: Path) -> None:
    root = tmp_path / "shapes"
    kw = dict(synthetic={"num_images": 12, "image_size": 32, "seed": 1})
    dm = small_datamodule(root, tmp_path / "cache", **kw)
    dm.prepare_data()
    dm.setup("fit")
    assert (
        len(list((root / "Images").iterdir())) == 12 and len(dm.annotations.splits["train"]) == 10
    )
    stamp = (root / "shapes.json").stat().st_mtime_ns
    small_datamodule(root, tmp_path / "cache", **kw).prepare_data()
    assert (root / "shapes.json").stat().st_mtime_ns == stamp


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match="captions_per_image"):
        CaptionDataModule(captions_per_image="2")
    with pytest.raises(ConfigError, match="bad_images"):
        CaptionDataModule(bad_images="ignore")


class _MeanColour(torch.nn.Module):
    """A frozen stand-in encoder: (B, 3, S, S) -> (B, 1, 3), the mean colour."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.mean(dim=(2, 3))[:, None, :]


def test_the_encoder_given_when_built_fills_the_cache_in_one_setup(
    shapes_root: Path, tmp_path: Path
) -> None:
    dm = small_datamodule(
        shapes_root,
        tmp_path,
        cache_features=True,
        feature_encoder=_MeanColour(),
        encoder_key={"arch": "mean_colour"},
    )
    dm.setup("fit")  # once: vocabulary, caches and datasets
    assert set(dm.datasets) == {"train", "val"}
    assert dm.datasets["train"][0]["features"].shape == (1, 3)
    assert len(list(tmp_path.glob("*.npy"))) == 2


def test_setup_without_the_cache_encoder_says_how_to_give_it(
    shapes_root: Path, tmp_path: Path
) -> None:
    dm = small_datamodule(shapes_root, tmp_path, cache_features=True)
    assert dm.prepare_vocabulary() is dm.vocab  # what a model is sized from, nothing more
    assert dm.datasets == {}
    with pytest.raises(ConfigError, match="feature_encoder="):
        dm.setup("fit")


def test_a_given_vocabulary_defines_the_word_ids(shapes_root: Path, tmp_path: Path) -> None:
    words = Vocabulary.from_dict({"itos": ["<pad>", "<start>", "<end>", "<unk>", "red"]})
    dm = small_datamodule(shapes_root, tmp_path, vocab=words)
    dm.setup("fit")
    assert dm.vocabulary() is words
    assert not list(tmp_path.glob("vocab-*.json"))  # nothing built, nothing cached
    batch = next(iter(dm.train_dataloader()))
    assert int(batch["captions"].max()) < len(words)
