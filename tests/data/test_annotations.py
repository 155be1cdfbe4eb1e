"""Annotation layouts, splits, and the one-line errors for bad input."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from imgcap.data.annotations import detect_layout, load_annotations, seeded_split, split_sizes
from imgcap.data.cache_location import default_cache_dir
from imgcap.data.datamodule import CaptionDataModule
from imgcap.errors import DataError
from imgcap.vocab import Vocabulary
from tests.support.datasets import make_images, make_kaggle, make_original

SPLIT_LISTS = ("Flickr_8k.trainImages.txt", "Flickr_8k.devImages.txt", "Flickr_8k.testImages.txt")


# ------------------------------------------------------------------ helpers


def link_sample(sample: Path, dest: Path, layout: str) -> Path:
    """A temporary copy of one layout of the sample made of symlinks (no image is copied)."""
    dest.mkdir()
    if layout == "kaggle":
        (dest / "Images").symlink_to(sample / "Images", target_is_directory=True)
        (dest / "captions.txt").symlink_to(sample / "captions.txt")
        for name in SPLIT_LISTS:  # lists in root: the Kaggle download has none, users add them
            (dest / name).symlink_to(sample / "Flickr8k_text" / name)
    else:
        (dest / "Flicker8k_Dataset").symlink_to(sample / "Images", target_is_directory=True)
        (dest / "Flickr8k_text").mkdir()
        for name in ("Flickr8k.token.txt", *SPLIT_LISTS):
            (dest / "Flickr8k_text" / name).symlink_to(sample / "Flickr8k_text" / name)
    return dest


# ------------------------------------------------------------------ the real sample


def test_sample_layouts_agree(flickr8k_sample: Path, tmp_path: Path) -> None:
    kaggle = load_annotations(link_sample(flickr8k_sample, tmp_path / "k", "kaggle"))
    original = load_annotations(link_sample(flickr8k_sample, tmp_path / "o", "original"))
    assert (kaggle.layout, original.layout) == ("kaggle", "original")
    for ann in (kaggle, original):
        assert ann.split_source == "official"
        assert {s: len(ids) for s, ids in ann.splits.items()} == {
            "train": 120,
            "val": 20,
            "test": 20,
        }
        assert len(ann.captions) == 160 and all(len(c) == 5 for c in ann.captions.values())
    assert kaggle.captions == original.captions
    assert kaggle.splits == original.splits
    # A comma-bearing caption proves the CSV quoting was honoured.
    assert any("," in c for caps in kaggle.captions.values() for c in caps)

    vocabs = []
    for name, root in (("k", tmp_path / "k"), ("o", tmp_path / "o")):
        dm = CaptionDataModule(root=str(root), min_word_freq=2, quiet=True)
        dm.setup("validate")
        vocabs.append(dm.vocab)
        # The cache goes to the user's cache folder, never into the dataset folder.
        assert dm.vocab_path().is_file() and dm.cache_dir == default_cache_dir(), name
        assert not (root / ".imgcap_cache").exists(), name
    assert vocabs[0] == vocabs[1] and len(vocabs[0]) > 50


def test_sample_kaggle_without_lists_gets_seeded_split(
    flickr8k_sample: Path, tmp_path: Path
) -> None:
    root = tmp_path / "k"
    root.mkdir()
    (root / "Images").symlink_to(flickr8k_sample / "Images", target_is_directory=True)
    (root / "captions.txt").symlink_to(flickr8k_sample / "captions.txt")
    ann = load_annotations(root, split_seed=3)
    assert ann.split_source == "seeded"
    assert (
        [len(ann.splits[s]) for s in ("train", "val", "test")]
        == list(split_sizes(160))
        == [119, 20, 20]
    )
    assert ann.splits == load_annotations(root, split_seed=3).splits


# ------------------------------------------------------------------ layouts and splits


def test_karpathy_json_layout(tmp_path: Path) -> None:
    names = [f"k{i}.jpg" for i in range(4)]
    make_images(tmp_path / "Images", names)
    splits = ["train", "restval", "val", "test"]
    data = {
        "images": [
            {"filename": n, "split": s, "sentences": [{"raw": f"A bird {i} .", "tokens": []}]}
            for i, (n, s) in enumerate(zip(names, splits, strict=True))
        ]
    }
    (tmp_path / "dataset_flickr8k.json").write_text(json.dumps(data))
    ann = load_annotations(tmp_path)
    assert ann.layout == "karpathy" and ann.split_source == "karpathy"
    assert ann.splits == {"train": names[:2], "val": [names[2]], "test": [names[3]]}
    assert ann.captions["k1.jpg"] == ["A bird 1 ."]


@pytest.mark.parametrize("layout", ["kaggle", "original"])
def test_split_precedence_karpathy_then_official_then_seeded(tmp_path: Path, layout: str) -> None:
    """With all three files present the Karpathy json wins, whatever the caption file; without
    it the official lists; without both a seeded split."""
    names = (make_kaggle if layout == "kaggle" else make_original)(tmp_path, n=6)
    text = tmp_path if layout == "kaggle" else tmp_path / "Flickr8k_text"
    official = {"train": names[:4], "val": [names[4]], "test": [names[5]]}
    for ids, name in zip(official.values(), SPLIT_LISTS, strict=True):
        (text / name).write_text("".join(n + "\n" for n in ids))
    karpathy = {"train": names[2:], "val": [names[0]], "test": [names[1]]}
    entries = [
        {"filename": n, "split": s, "sentences": [{"raw": "x", "tokens": ["x"]}]}
        for s, ids in karpathy.items()
        for n in ids
    ]
    (tmp_path / "dataset_flickr8k.json").write_text(json.dumps({"images": entries}))

    ann = load_annotations(tmp_path)
    assert ann.layout == layout  # captions still come from the caption file
    assert ann.split_source == "karpathy" and ann.splits == karpathy
    assert ann.split_file == tmp_path / "dataset_flickr8k.json"
    assert ann.split_info()["split_sizes"] == {"train": 4, "val": 1, "test": 1}
    assert "split: karpathy" in ann.describe()
    assert ann.captions[names[0]] != ["x"]

    (tmp_path / "dataset_flickr8k.json").unlink()
    ann = load_annotations(tmp_path)
    assert ann.split_source == "official" and ann.splits == official

    for name in SPLIT_LISTS:
        (text / name).unlink()
    assert load_annotations(tmp_path).split_source == "seeded"


def test_karpathy_json_naming_uncaptioned_images_is_one_line(tmp_path: Path) -> None:
    names = make_kaggle(tmp_path, n=3)
    make_images(tmp_path / "Images", ["extra.jpg"])
    entries = [
        {"filename": n, "split": "train", "sentences": [{"raw": "x"}]}
        for n in [*names, "extra.jpg"]
    ]
    (tmp_path / "dataset_flickr8k.json").write_text(json.dumps({"images": entries}))
    with pytest.raises(DataError, match="have no captions in .*captions.txt"):
        load_annotations(tmp_path)


def test_original_layout_with_images_folder(tmp_path: Path) -> None:
    make_original(tmp_path)
    (tmp_path / "Flicker8k_Dataset").rename(tmp_path / "Images")
    layout, caption_file, image_dir = detect_layout(tmp_path)
    assert (
        layout == "original"
        and caption_file.name == "Flickr8k.token.txt"
        and image_dir.name == "Images"
    )


def test_seeded_split_is_stable_and_proportional() -> None:
    ids = [f"img_{i:04d}.jpg" for i in range(100)]
    split = seeded_split(ids, seed=0)
    assert [len(split[s]) for s in ("train", "val", "test")] == [74, 12, 12]
    # Fixed expectation: a change here breaks every user's published split.
    assert split["train"][:3] == EXPECTED_FIRST_TRAIN
    assert split["val"][:2] == EXPECTED_FIRST_VAL
    assert seeded_split(list(reversed(ids)), seed=0) == split  # input order does not matter
    assert seeded_split(ids, seed=1)["train"][:3] != split["train"][:3]
    assert not set(split["train"]) & set(split["val"]) and not set(split["val"]) & set(
        split["test"]
    )
    assert split_sizes(8091) == (6000, 1000, 1000)
    assert split_sizes(160) == (119, 20, 20)


EXPECTED_FIRST_TRAIN = ["img_0026.jpg", "img_0008.jpg", "img_0037.jpg"]
EXPECTED_FIRST_VAL = ["img_0096.jpg", "img_0005.jpg"]


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize("make_empty", [False, True])
def test_missing_or_empty_root(tmp_path: Path, make_empty: bool) -> None:
    root = tmp_path / "flickr8k"
    if make_empty:
        root.mkdir()
    dm = CaptionDataModule(root=str(root), quiet=True)
    with pytest.raises(DataError) as err:
        dm.prepare_data()
    msg = str(err.value)
    assert str(root) in msg and "adityajn105/flickr8k" in msg and "experiment=demo" in msg
    assert "\n" not in msg


def test_malformed_csv_row_names_file_and_line(tmp_path: Path) -> None:
    make_kaggle(tmp_path, n=2, rows=["im0.jpg,a dog", "im1.jpg,a dog, running,fast"])
    with pytest.raises(DataError, match=r"captions\.txt:3: expected 2 fields"):
        load_annotations(tmp_path)


def test_bad_csv_header(tmp_path: Path) -> None:
    make_kaggle(tmp_path, n=1)
    (tmp_path / "captions.txt").write_text("file,text\nim0.jpg,a dog\n")
    with pytest.raises(DataError, match=r"captions\.txt:1: expected the header"):
        load_annotations(tmp_path)


def test_empty_caption_names_file_and_line(tmp_path: Path) -> None:
    make_kaggle(tmp_path, n=2, rows=["im0.jpg,a dog", "im1.jpg,a cat", 'im1.jpg,"  "'])
    with pytest.raises(DataError, match=r"captions\.txt:4: empty caption for im1\.jpg"):
        load_annotations(tmp_path)


def test_empty_caption_in_token_file(tmp_path: Path) -> None:
    make_original(tmp_path, n=2, extra_lines=("im1.jpg#2\t ",))
    with pytest.raises(DataError, match=r"Flickr8k\.token\.txt:5: empty caption for im1\.jpg"):
        load_annotations(tmp_path)


def test_malformed_token_line(tmp_path: Path) -> None:
    make_original(tmp_path, n=2, extra_lines=("im1.jpg a caption without tab",))
    with pytest.raises(
        DataError, match=r"Flickr8k\.token\.txt:5: expected 'IMAGE\.jpg#N<TAB>caption'"
    ):
        load_annotations(tmp_path)


def test_kaggle_image_listed_but_missing(tmp_path: Path) -> None:
    make_kaggle(tmp_path, n=3)
    (tmp_path / "Images" / "im1.jpg").unlink()
    with pytest.raises(DataError) as err:
        load_annotations(tmp_path)
    msg = str(err.value)
    assert "captions.txt:4" in msg and "im1.jpg" in msg and "missing" in msg


def test_orphan_token_id_warns_once_and_is_skipped(tmp_path: Path) -> None:
    orphans = (
        "2258277193_586949ec62.jpg.1#0\tA dog .",
        "2258277193_586949ec62.jpg.1#1\tA brown dog .",
    )
    make_original(tmp_path, n=6, extra_lines=orphans)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ann = load_annotations(tmp_path)
    messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert (
        len(messages) == 1
        and "2258277193_586949ec62.jpg.1" in messages[0]
        and "1 caption id" in messages[0]
    )
    assert "2258277193_586949ec62.jpg.1" not in ann.captions and len(ann.captions) == 6
    assert ann.skipped == ["2258277193_586949ec62.jpg.1"]


def test_split_list_naming_unknown_image(tmp_path: Path) -> None:
    names = make_kaggle(tmp_path, n=6)
    (tmp_path / SPLIT_LISTS[0]).write_text("\n".join(names[:3]) + "\nghost.jpg\n")
    (tmp_path / SPLIT_LISTS[1]).write_text(names[4] + "\n")
    (tmp_path / SPLIT_LISTS[2]).write_text(names[5] + "\n")
    with pytest.raises(
        DataError, match=r"Flickr_8k\.trainImages\.txt:4: split list names ghost\.jpg"
    ):
        load_annotations(tmp_path)


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_truncated_jpeg_error_and_skip(tmp_path: Path) -> None:
    names = make_kaggle(tmp_path, n=8)
    truncate(tmp_path / "Images" / names[2])
    with pytest.raises(DataError) as err:
        CaptionDataModule(root=str(tmp_path), quiet=True, min_word_freq=1).setup("fit")
    assert names[2] in str(err.value) and "bad_images=skip" in str(err.value)
    assert not default_cache_dir().exists()  # nothing written by the failed run

    dm = CaptionDataModule(root=str(tmp_path), quiet=True, min_word_freq=1, bad_images="skip")
    with pytest.warns(UserWarning, match=names[2]):
        dm.setup(None)
    assert all(names[2] not in ids for ids in dm.annotations.splits.values())
    assert sum(len(ids) for ids in dm.annotations.splits.values()) >= 5


def test_failed_run_keeps_earlier_vocabulary(tmp_path: Path) -> None:
    make_kaggle(tmp_path, n=8)
    dm = CaptionDataModule(root=str(tmp_path), quiet=True, min_word_freq=1)
    dm.prepare_data()
    vocab_file = dm.vocab_path()
    before = vocab_file.read_bytes()
    with open(tmp_path / "captions.txt", "a") as f:
        f.write("im0.jpg,one,two\n")
    with pytest.raises(DataError, match=r"captions\.txt:18"):
        CaptionDataModule(root=str(tmp_path), quiet=True, min_word_freq=1).prepare_data()
    assert vocab_file.read_bytes() == before
    assert Vocabulary.load(vocab_file) == dm.vocab
    assert [p.name for p in default_cache_dir().iterdir()] == [vocab_file.name]
