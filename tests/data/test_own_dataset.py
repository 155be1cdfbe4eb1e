"""A user's own small dataset: caches outside the dataset folder, a warning when the vocabulary
would turn most words into <unk>, and a line about caches left by earlier versions."""

from __future__ import annotations

import logging
from pathlib import Path

from PIL import Image

from imgcap.data.cache_location import dataset_identity, default_cache_dir
from imgcap.data.datamodule import CaptionDataModule
from imgcap.vocab import Vocabulary, vocabulary_warning

# 30 images, each with 5 captions drawn from a varied word list: most words occur < 5 times.
_WORDS = (
    "dog cat bird horse child woman man boy girl car bike boat ball tree grass beach snow "
    "water road park field wall door table chair river hill bench fence sky"
).split()


def make_own_dataset(root: Path, n: int = 30) -> None:
    """Kaggle layout with its own names: ``root/photos/*.jpg`` and ``root/captions.csv``."""
    (root / "photos").mkdir(parents=True)
    rows = []
    for i in range(n):
        Image.new("RGB", (24, 24), (8 * i % 256, 40, 90)).save(root / "photos" / f"p{i}.jpg")
        for k in range(5):
            a, b = _WORDS[(i + k) % len(_WORDS)], _WORDS[(3 * i + 2 * k + 1) % len(_WORDS)]
            rows.append(f"p{i}.jpg,a {a} near the {b}")
    (root / "captions.csv").write_text("image,caption\n" + "\n".join(rows) + "\n")


def _dm(root: Path, **kw) -> CaptionDataModule:
    return CaptionDataModule(
        root=str(root), annotations_file="captions.csv", image_dir="photos", quiet=True, **kw
    )


def test_small_vocabulary_warns_in_one_line(tmp_path: Path, caplog) -> None:
    make_own_dataset(tmp_path / "mine")
    with caplog.at_level(logging.WARNING, logger="imgcap"):
        dm = _dm(tmp_path / "mine", min_word_freq=5)
        dm.setup("fit")
    lines = [r.getMessage() for r in caplog.records if "small vocabulary" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0], lines
    kept = len(dm.vocab) - 4
    assert f"keeps {kept} of " in lines[0] and "become <unk>" in lines[0]
    assert "data.min_word_freq=1" in lines[0] and "data.min_word_freq=5" in lines[0]

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="imgcap"):
        _dm(tmp_path / "mine", min_word_freq=1).setup("fit")
    assert not [r for r in caplog.records if "small vocabulary" in r.getMessage()]


def test_vocabulary_warning_thresholds() -> None:
    big = [f"w{i} w{i} w{i}" for i in range(300)] + ["rare"]
    vocab = Vocabulary.build(big, min_word_freq=2)
    assert vocabulary_warning(vocab, big, 2) is None  # 300 words kept, <1% <unk>
    tiny = ["red square", "blue circle", "red circle"]
    vocab = Vocabulary.build(tiny, min_word_freq=1)
    assert vocabulary_warning(vocab, tiny, 1) is None  # tiny but nothing dropped: nothing to lower
    vocab = Vocabulary.build(tiny, min_word_freq=2)
    message = vocabulary_warning(vocab, tiny, 2)
    assert message is not None and "keeps 2 of 4" in message and "33%" in message


def test_caches_stay_out_of_the_dataset_folder(tmp_path: Path) -> None:
    make_own_dataset(tmp_path / "mine")
    dm = _dm(tmp_path / "mine", min_word_freq=1)
    dm.prepare_data()
    assert dm.cache_dir == default_cache_dir() and dm.vocab_path().is_file()
    assert not [
        p for p in (tmp_path / "mine").rglob("*") if "cache" in p.name or p.suffix == ".json"
    ]


def test_vocabulary_cache_is_per_dataset(tmp_path: Path) -> None:
    """Same captions and file names in two folders: two vocabulary files in one cache folder."""
    make_own_dataset(tmp_path / "a")
    make_own_dataset(tmp_path / "b")
    cache = tmp_path / "cache"
    paths = {_dm(tmp_path / x, min_word_freq=1, cache_dir=str(cache)).vocab_path() for x in "ab"}
    assert len(paths) == 2


def test_dataset_identity_changes_with_the_files(tmp_path: Path) -> None:
    make_own_dataset(tmp_path / "mine")
    ids = [f"p{i}.jpg" for i in range(30)]
    before = dataset_identity(tmp_path / "mine" / "photos", ids)
    assert before == dataset_identity(tmp_path / "mine" / "photos", ids)
    Image.new("RGB", (30, 30), (1, 2, 3)).save(tmp_path / "mine" / "photos" / "p3.jpg")
    assert dataset_identity(tmp_path / "mine" / "photos", ids)["files"] != before["files"]


def test_old_cache_in_the_dataset_folder_is_named_once(tmp_path: Path, caplog) -> None:
    make_own_dataset(tmp_path / "mine")
    old = tmp_path / "mine" / ".imgcap_cache"
    old.mkdir()
    (old / "vocab-0123456789abcdef.json").write_text('{"itos": []}')
    with caplog.at_level(logging.WARNING, logger="imgcap"):
        dm = _dm(tmp_path / "mine", min_word_freq=1, cache_dir=str(tmp_path / "cache"))
        dm.prepare_data()
        dm.setup("fit")
    lines = [r.getMessage() for r in caplog.records if str(old) in r.getMessage()]
    assert len(lines) == 1 and "no longer used" in lines[0] and str(tmp_path / "cache") in lines[0]


def test_json_layout_with_the_users_own_split(tmp_path: Path) -> None:
    """The README's second layout: Karpathy-style json with only filename, split, raw."""
    import json

    make_own_dataset(tmp_path / "mine")
    entries = [
        {
            "filename": f"p{i}.jpg",
            "split": "train" if i < 24 else "val" if i < 27 else "test",
            "sentences": [{"raw": f"a photo number {i % 3} ."}],
        }
        for i in range(30)
    ]
    (tmp_path / "mine" / "mine.json").write_text(json.dumps({"images": entries}))
    dm = CaptionDataModule(
        root=str(tmp_path / "mine"),
        annotations_file="mine.json",
        image_dir="photos",
        min_word_freq=1,
        quiet=True,
    )
    dm.setup("fit")
    sizes = {s: len(ids) for s, ids in dm.annotations.splits.items()}
    assert sizes == {"train": 24, "val": 3, "test": 3}
    assert dm.annotations.dataset_ids == {}  # no cocoid: COCO files fall back to positions
