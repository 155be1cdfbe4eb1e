"""The Flickr8k-sized generator: layout the readers accept, sizes, names, content, determinism."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgcap.data.annotations import load_annotations
from imgcap.data.flickr_like import (
    COLOURS,
    META_FILE,
    generate_flickr_like,
    is_complete,
    main,
    split_sizes,
)
from imgcap.errors import DataError


@pytest.fixture(scope="module")
def flickr_like_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_flickr_like(tmp_path_factory.mktemp("fl") / "set", num_images=40, workers=2)


def tree_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_split_sizes_follow_flickr8k() -> None:
    assert split_sizes(8091) == {"train": 6000, "dev": 1000, "test": 1000}
    assert split_sizes(60) == {"train": 44, "dev": 7, "test": 7}
    assert split_sizes(3) == {"train": 1, "dev": 1, "test": 1}


def test_readers_load_it_with_the_official_lists(flickr_like_root: Path) -> None:
    ann = load_annotations(flickr_like_root)
    assert ann.layout == "kaggle" and ann.split_source == "official"
    assert {s: len(v) for s, v in ann.splits.items()} == {"train": 30, "val": 5, "test": 5}
    assert len(ann.captions) == 40  # every image is captioned; 0 of 40 left out of the lists
    assert all(len(c) == 5 and len(set(c)) == 5 for c in ann.captions.values())
    assert all(re.fullmatch(r"\d{10}_[0-9a-f]{10}\.jpg", name) for name in ann.captions)


def test_images_are_flickr_sized_jpegs_that_show_their_captions(flickr_like_root: Path) -> None:
    meta = json.loads((flickr_like_root / META_FILE).read_text())
    ann = load_annotations(flickr_like_root)
    portrait = 0
    for name, record in meta["images"].items():
        with Image.open(flickr_like_root / "Images" / name) as img:
            assert img.format == "JPEG" and img.mode == "RGB"
            width, height = img.size
            pixels = np.asarray(img, dtype=np.int32)
        assert [width, height] == record["size"]
        assert 300 <= min(width, height) <= 375 and 400 <= max(width, height) <= 500
        portrait += height > width
        for obj in record["objects"]:
            x0, y0, x1, y1 = obj["box"]
            if obj["shape"] in ("circle", "square", "triangle", "cross"):  # filled centre
                centre = pixels[(y0 + y1) // 2 + (y1 - y0) // 8, (x0 + x1) // 2]
                assert np.abs(centre - np.array(COLOURS[obj["colour"]])).max() < 50, (name, obj)
        first = record["objects"][0]
        assert any(f"{first['colour']} {first['shape']}" in c for c in ann.captions[name])
    assert 0 < portrait < len(meta["images"])


def test_same_parameters_give_identical_bytes_whatever_the_workers(tmp_path: Path) -> None:
    a = tree_hashes(generate_flickr_like(tmp_path / "a", num_images=12, seed=3, workers=1))
    b = tree_hashes(generate_flickr_like(tmp_path / "b", num_images=12, seed=3, workers=2))
    c = tree_hashes(generate_flickr_like(tmp_path / "c", num_images=12, seed=4, workers=1))
    assert len(a) == 12 + 5  # images, captions.txt, 3 split lists, flickr_like.json
    assert a == b and a != c


def test_reuse_refusal_and_cli(tmp_path: Path) -> None:
    root = tmp_path / "set"
    assert main(["--root", str(root), "--images", "6", "--workers", "1"]) == 0
    assert is_complete(root, 6) and not is_complete(root, 7)
    before = (root / META_FILE).stat().st_mtime_ns
    generate_flickr_like(root, num_images=6, workers=1)  # same parameters: reused as is
    assert (root / META_FILE).stat().st_mtime_ns == before
    with pytest.raises(DataError, match="not empty"):
        generate_flickr_like(root, num_images=7, workers=1)
    generate_flickr_like(root, num_images=7, workers=1, overwrite=True)
    assert len(list((root / "Images").iterdir())) == 7
    other = tmp_path / "other"
    other.mkdir()
    (other / "mine.txt").write_text("keep")
    assert main(["--root", str(other), "--images", "6"]) == 2
    assert (other / "mine.txt").read_text() == "keep"
