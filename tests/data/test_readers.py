"""The annotation reader registry, Karpathy files in the COCO style (images in ``filepath/``
folders), the generic data module's new settings, and the references in training batches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from imgcap.callbacks import CaptionSampleLogger
from imgcap.checkpoint import read_checkpoint
from imgcap.data import readers as registry
from imgcap.data.annotations import detect_layout, load_annotations
from imgcap.data.datamodule import CaptionDataModule, Flickr8kDataModule
from imgcap.data.readers import Reader, ReadResult, get_reader, reader_names, register_reader
from imgcap.errors import ConfigError, DataError
from tests.support.data_helpers import small_datamodule
from tests.support.datasets import (
    BLUE,
    COCO_ENTRIES,
    RED,
    coco_caption,
    make_coco_tree,
    make_image,
    make_kaggle_and_token,
)
from tests.support.hydra_helpers import compose_train

FIXTURE_CKPT = Path(__file__).resolve().parents[1] / "fixtures" / "checkpoint_format1.ckpt"


# ------------------------------------------------------------------ helpers


def colour_of(pixels: torch.Tensor) -> str:
    """'red' or 'blue' for a normalised (3, S, S) image or (P, 3) features of one."""
    means = pixels.float().reshape(3, -1).mean(1) if pixels.dim() == 3 else pixels.mean(0)
    return "red" if means[0] > means[2] else "blue"


class MeanColour(nn.Module):
    """(B, 3, S, S) -> (B, P=1, C=3): the mean of each channel, a frozen 'encoder'."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))[:, None, :]


@pytest.fixture
def scratch_registry():
    """Register readers inside a test only."""
    readers = registry.READERS
    readers.discover()
    saved = dict(readers.classes), dict(readers.aliases)
    yield
    readers.classes.clear()
    readers.classes.update(saved[0])
    readers.aliases.clear()
    readers.aliases.update(saved[1])


# ------------------------------------------------------------------ the registry


def test_builtin_readers_order_and_aliases() -> None:
    assert reader_names() == ["kaggle", "original", "karpathy"]  # the detection order
    for alias, name in [
        ("kaggle_csv", "kaggle"),
        ("token_file", "original"),
        ("karpathy_json", "karpathy"),
    ]:
        assert get_reader(alias) is get_reader(name)


def test_unknown_layout_lists_registered_names(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        CaptionDataModule(root=str(tmp_path), layout="flickr9k")  # before any work
    msg = str(err.value)
    assert "data.layout='flickr9k'" in msg and "\n" not in msg
    for name in ("auto", "kaggle", "kaggle_csv", "original", "token_file", "karpathy"):
        assert name in msg
    make_kaggle_and_token(tmp_path)
    with pytest.raises(ConfigError, match="karpathy_json"):
        load_annotations(tmp_path, layout="nope")


def test_layout_names_a_reader_and_auto_keeps_the_order(tmp_path: Path) -> None:
    make_kaggle_and_token(tmp_path)
    assert load_annotations(tmp_path).layout == "kaggle"  # the CSV comes first, as before
    for layout in ("original", "token_file"):
        ann = load_annotations(tmp_path, layout=layout)
        assert ann.layout == "original" and ann.captions["im0.jpg"][0] == "a cat sits number 0"
    dm = small_datamodule(tmp_path, tmp_path / "cache", layout="token_file")
    dm.setup("fit")
    assert dm.layout == "original" and dm.annotations.layout == "original"
    with pytest.raises(DataError, match=r"data\.layout=karpathy: no dataset_.*json under"):
        load_annotations(tmp_path, layout="karpathy")


def test_a_new_reader_is_one_registered_class(tmp_path: Path, scratch_registry) -> None:
    @register_reader
    class PipeSeparated(Reader):
        name = "pipes"
        priority = 5  # before the built-in readers
        expects = "pipes.txt"

        def find(self, root: Path) -> Path | None:
            return root / "pipes.txt" if (root / "pipes.txt").is_file() else None

        def read(self, path: Path, image_dir: Path) -> ReadResult:
            captions: dict[str, list[str]] = {}
            for line in path.read_text().splitlines():
                image, caption = line.split("|")
                captions.setdefault(image, []).append(caption)
            return ReadResult(captions, splits={"train": ["a.jpg"], "val": ["b.jpg"]})

    make_image(tmp_path / "Images" / "a.jpg", RED)
    make_image(tmp_path / "Images" / "b.jpg", BLUE)
    (tmp_path / "pipes.txt").write_text("a.jpg|one red\nb.jpg|one blue\na.jpg|a red one\n")
    (tmp_path / "captions.txt").write_text("image,caption\na.jpg,ignored\n")
    assert reader_names()[0] == "pipes"
    ann = load_annotations(tmp_path)
    assert (ann.layout, ann.split_source) == ("pipes", "pipes")
    assert ann.captions["a.jpg"] == ["one red", "a red one"]
    assert ann.splits == {"train": ["a.jpg"], "val": ["b.jpg"], "test": []}
    assert load_annotations(tmp_path, layout="kaggle").captions == {"a.jpg": ["ignored"]}
    with pytest.raises(AssertionError, match="already taken"):

        @register_reader
        class Clash(Reader):
            name = "kaggle_csv"


# ------------------------------------------------------------------ Karpathy json, COCO style


def test_coco_tree_splits_captions_and_ids(tmp_path: Path) -> None:
    make_coco_tree(tmp_path)
    layout, caption_file, image_dir = detect_layout(tmp_path)
    assert (layout, caption_file.name, image_dir) == ("karpathy", "dataset_coco.json", tmp_path)

    ann = load_annotations(tmp_path)
    assert ann.layout == "karpathy" and ann.split_source == "karpathy"
    ids = [f"{fp}/{fn}" for fp, fn, _ in COCO_ENTRIES]
    # restval counts as train, in file order
    assert ann.splits == {"train": ids[:4], "val": [ids[4]], "test": [ids[5]]}
    assert ids[1] == "train2014/same.jpg" and ids[2] == "val2014/same.jpg"
    assert len(ann.captions) == len(COCO_ENTRIES)
    for i, (fp, fn, _) in enumerate(COCO_ENTRIES):
        expected = [coco_caption(fp, fn, k) for k in range(2 + i % 2)]
        assert ann.captions[f"{fp}/{fn}"] == expected
        assert ann.image_path(f"{fp}/{fn}") == tmp_path / fp / fn
    assert ann.captions["train2014/same.jpg"] != ann.captions["val2014/same.jpg"]


@pytest.mark.parametrize("source", ["files", "preload"])
def test_coco_images_load_from_their_folder(tmp_path: Path, source: str) -> None:
    make_coco_tree(tmp_path / "coco")
    dm = small_datamodule(
        tmp_path / "coco", tmp_path / "cache", preload=source == "preload", batch_size=64
    )
    dm.setup(None)
    for split in ("train", "val", "test"):
        for item in dm.datasets[split]:
            expected = "red" if item["image_id"].startswith("train2014/") else "blue"
            assert colour_of(item["images"]) == expected, (split, item["image_id"])
    batch = next(iter(dm.train_dataloader()))
    seen = {i: colour_of(x) for i, x in zip(batch["image_ids"], batch["images"], strict=True)}
    assert seen["train2014/same.jpg"] == "red" and seen["val2014/same.jpg"] == "blue"


def test_coco_feature_cache_keeps_same_named_files_apart(tmp_path: Path) -> None:
    make_coco_tree(tmp_path / "coco")
    dm = small_datamodule(tmp_path / "coco", tmp_path / "cache", cache_features=True)
    dm.prepare_vocabulary()
    dm.attach_feature_encoder(MeanColour(), {"arch": "mean_colour"})
    dm.setup("fit")
    train = dm.datasets["train"]
    features = {}
    for k in range(len(train)):
        item = train[k]
        assert item["features"].shape == (1, 3)
        features[item["image_id"]] = item["features"][0]
    assert colour_of(features["train2014/same.jpg"][None]) == "red"
    assert colour_of(features["val2014/same.jpg"][None]) == "blue"


def test_coco_image_check_names_the_folder(tmp_path: Path) -> None:
    root = tmp_path / "coco"
    make_coco_tree(root)
    broken = root / "val2014" / "same.jpg"
    broken.write_bytes(broken.read_bytes()[:100])
    with pytest.raises(DataError) as err:
        small_datamodule(root, tmp_path / "cache").setup("fit")
    assert str(broken) in str(err.value) and "bad_images=skip" in str(err.value)
    dm = small_datamodule(root, tmp_path / "cache", bad_images="skip")
    with pytest.warns(UserWarning, match="val2014/same.jpg"):
        dm.setup("fit")
    assert "val2014/same.jpg" not in dm.annotations.splits["train"]
    assert "train2014/same.jpg" in dm.annotations.splits["train"]  # its namesake stays


def test_sample_pictures_come_from_the_right_folder(tmp_path: Path) -> None:
    make_coco_tree(tmp_path / "coco")
    dm = small_datamodule(tmp_path / "coco", tmp_path / "cache")
    dm.setup("validate")
    samples = CaptionSampleLogger(pictures=dm.picture)  # what the run gives the callback
    for image_id, colour in [("train2014/same.jpg", RED), ("val2014/same.jpg", BLUE)]:
        picture = samples.pictures(image_id)  # (S, S, 3) uint8
        assert picture.shape == (32, 32, 3)
        assert abs(picture[..., 0].mean() - colour[0]) < 20, image_id


def test_explicit_annotations_file_and_image_dir(tmp_path: Path) -> None:
    root = tmp_path / "coco"
    make_coco_tree(root, json_path=root / "splits" / "karpathy.json", image_root=root / "pix")
    with pytest.raises(DataError, match="no captions found"):
        load_annotations(root)  # nothing where the readers look
    for layout in ("auto", "karpathy_json"):
        ann = load_annotations(
            root, layout=layout, annotations_file="splits/karpathy.json", image_dir="pix"
        )
        assert ann.layout == "karpathy" and ann.image_dir == root / "pix"
        assert ann.caption_file == root / "splits" / "karpathy.json"
        assert len(ann.splits["train"]) == 4
    absolute = load_annotations(
        tmp_path / "elsewhere",
        annotations_file=root / "splits" / "karpathy.json",
        image_dir=root / "pix",
    )
    assert absolute.captions == ann.captions

    dm = small_datamodule(
        root, tmp_path / "cache", annotations_file="splits/karpathy.json", image_dir="pix"
    )
    dm.setup("test")
    assert colour_of(dm.datasets["test"][0]["images"]) == "blue"

    with pytest.raises(DataError, match=r"data\.annotations_file: .*nothere\.json does not exist"):
        load_annotations(root, annotations_file="nothere.json")
    with pytest.raises(DataError, match=r"data\.image_dir: .*nope is not a folder"):
        load_annotations(root, annotations_file="splits/karpathy.json", image_dir="nope")
    # without data.image_dir the images are looked for under root: the hint says what to set
    with pytest.raises(DataError, match=r"train2014/COCO_train2014_000000000001\.jpg .*image_dir"):
        load_annotations(root, annotations_file="splits/karpathy.json")


def test_explicit_file_format_is_detected_from_the_file(tmp_path: Path) -> None:
    names = make_kaggle_and_token(tmp_path)
    (tmp_path / "captions.txt").rename(tmp_path / "my_captions.csv")
    ann = load_annotations(tmp_path, annotations_file="my_captions.csv")
    assert ann.layout == "kaggle" and ann.captions[names[0]][0] == "a dog runs number 0"
    (tmp_path / "Flickr8k_text" / "Flickr8k.token.txt").rename(tmp_path / "tokens.tsv")
    assert load_annotations(tmp_path, annotations_file="tokens.tsv").layout == "original"
    (tmp_path / "notes.md").write_text("# nothing to read\n")
    with pytest.raises(DataError, match="cannot tell the format .* set data.layout"):
        load_annotations(tmp_path, annotations_file="notes.md")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"split": "holdout"}, r"unknown split 'holdout' \(expected one of train, restval"),
        ({"filepath": "../outside"}, r"not a path inside the image folder"),
        ({"filepath": 3}, r"non-text filename or filepath"),
    ],
)
def test_bad_karpathy_entries_are_one_line(tmp_path: Path, change: dict, message: str) -> None:
    path = make_coco_tree(tmp_path)
    data = json.loads(path.read_text())
    data["images"][1].update(change)
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=message) as err:
        load_annotations(tmp_path)
    assert "images[1]" in str(err.value) and "\n" not in str(err.value)


def test_repeated_karpathy_image_is_refused(tmp_path: Path) -> None:
    path = make_coco_tree(tmp_path)
    data = json.loads(path.read_text())
    data["images"].append(dict(data["images"][2], split="test"))
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"images\[6\] repeats val2014/same\.jpg .*images\[2\]"):
        load_annotations(tmp_path)


# ------------------------------------------------------------------ references in training


@pytest.mark.parametrize("captions_per_image", ["all", 1])
def test_train_batches_carry_all_references(
    shapes_root: Path, tmp_path: Path, captions_per_image: str | int
) -> None:
    dm = small_datamodule(shapes_root, tmp_path, captions_per_image=captions_per_image)
    dm.setup("fit")
    captions = dm.annotations.captions
    vocab = dm.vocab
    for batch in dm.train_dataloader():
        assert len(batch["references"]) == len(batch["image_ids"]) == len(batch["captions"])
        for image_id, refs, row, n in zip(
            batch["image_ids"],
            batch["references"],
            batch["captions"],
            batch["lengths"].tolist(),
            strict=True,
        ):
            assert refs == captions[image_id] and len(refs) == 5
            assert all(isinstance(r, str) for r in refs)
            # the trained caption is one of its image's references
            assert vocab.decode(row[:n].tolist()) in {vocab.decode(vocab.encode(r)) for r in refs}


def test_train_references_follow_the_training_split(shapes_root: Path, tmp_path: Path) -> None:
    dm = small_datamodule(shapes_root, tmp_path, limit_train_images=7)
    refs = dm.train_references()  # loads the annotations itself
    ann = dm.annotations
    assert len(refs) == 7 == len(ann.splits["train"])
    assert refs == [ann.captions[i] for i in ann.splits["train"]]
    refs[0].append("changed")  # a copy: the data module's captions are untouched
    assert "changed" not in ann.captions[ann.splits["train"][0]]

    make_coco_tree(tmp_path / "coco")
    coco = small_datamodule(tmp_path / "coco", tmp_path / "cache")
    assert [len(r) for r in coco.train_references()] == [2, 3, 2, 3]  # train + restval


# ------------------------------------------------------------------ configs and old names


@pytest.mark.parametrize(
    ("data", "layout", "annotations_file", "root"),
    [
        ("flickr8k", "auto", None, "flickr8k"),
        ("shapes", "auto", None, "shapes"),
        ("flickr30k", "karpathy", "dataset_flickr30k.json", "flickr30k"),
        ("coco_karpathy", "karpathy", "dataset_coco.json", "coco"),
    ],
)
def test_data_configs_build_the_generic_module(
    tmp_path: Path, data: str, layout: str, annotations_file: str | None, root: str
) -> None:
    cfg = compose_train(tmp_path, [f"data={data}"])
    assert cfg.data._target_ == "imgcap.data.datamodule.CaptionDataModule"
    dm = instantiate(cfg.data)
    assert type(dm) is CaptionDataModule
    assert (dm.layout, dm.annotations_file, dm.image_dir) == (layout, annotations_file, None)
    assert dm.root.name == root


def test_old_checkpoint_data_config_still_builds_and_resumes_its_position(
    tmp_path: Path,
) -> None:
    checkpoint = read_checkpoint(FIXTURE_CKPT)
    data_cfg = dict(checkpoint["imgcap"]["config"]["data"], root=str(tmp_path / "data"))
    assert data_cfg["_target_"] == "imgcap.data.datamodule.Flickr8kDataModule"
    dm = instantiate(data_cfg)
    assert isinstance(dm, CaptionDataModule) and type(dm) is Flickr8kDataModule
    # Lightning keeps the data module's state under the class's name: an old run resumed from
    # its own config finds its training position.
    assert checkpoint[type(dm).__qualname__] == {"epoch": 2, "position": 0}
    dm.load_state_dict(checkpoint[type(dm).__qualname__])
    assert dm.training_order.resume_position == (2, 0)
