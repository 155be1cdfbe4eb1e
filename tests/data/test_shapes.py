"""The synthetic shapes generator: determinism, content matching its metadata, reuse."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from PIL import Image

from imgcap.data.annotations import load_annotations
from imgcap.data.shapes import COLOURS, generate_shapes, is_complete_shapes_dataset
from imgcap.vocab import Vocabulary


def tree_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_gives_identical_bytes(tmp_path: Path) -> None:
    a = tree_hashes(generate_shapes(tmp_path / "a", num_images=24, image_size=32, seed=7))
    b = tree_hashes(generate_shapes(tmp_path / "b", num_images=24, image_size=32, seed=7))
    c = tree_hashes(generate_shapes(tmp_path / "c", num_images=24, image_size=32, seed=8))
    assert len(a) == 24 + 5  # images + captions.txt, 3 split lists, shapes.json
    assert a == b
    assert a != c


def test_layout_captions_and_vocabulary(shapes_root: Path) -> None:
    ann = load_annotations(shapes_root)
    assert ann.layout == "kaggle" and ann.split_source == "official"
    assert {s: len(v) for s, v in ann.splits.items()} == {"train": 32, "val": 4, "test": 4}
    assert all(len(c) == 5 and len(set(c)) == 5 for c in ann.captions.values())
    vocab = Vocabulary.build((c for caps in ann.captions.values() for c in caps), min_word_freq=1)
    assert len(vocab) - 4 < 40


def test_boxes_match_pixels_and_captions(shapes_root: Path) -> None:
    meta = json.loads((shapes_root / "shapes.json").read_text())
    ann = load_annotations(shapes_root)
    assert len(meta["images"]) == 40
    for name, shapes in meta["images"].items():
        pixels = np.asarray(
            Image.open(shapes_root / "Images" / name).convert("RGB"), dtype=np.int32
        )
        assert pixels.shape == (32, 32, 3)
        for s in shapes:
            x0, y0, x1, y1 = s["box"]
            centre = pixels[(y0 + y1) // 2, (x0 + x1) // 2]
            assert np.abs(centre - np.array(COLOURS[s["colour"]])).max() < 60, (name, s)
            assert any(f"{s['colour']} {s['shape']}" in c for c in ann.captions[name])
        if len(shapes) == 2:
            left, right = shapes
            assert left["box"][2] < 16 <= right["box"][0]
            a, b = (f"{x['colour']} {x['shape']}" for x in (left, right))
            for c in ann.captions[name]:  # the left shape comes first unless it says "right of"
                assert c.index(a) < c.index(b) or f"{b} right of {('a ' + a)}" in c, (c, a, b)


def test_reuse_when_complete(tmp_path: Path) -> None:
    root = generate_shapes(tmp_path / "s", num_images=10, image_size=16, seed=0)
    assert is_complete_shapes_dataset(root, num_images=10, image_size=16, seed=0)
    assert not is_complete_shapes_dataset(root, num_images=11, image_size=16, seed=0)
    stamp = (root / "shapes.json").stat().st_mtime_ns
    generate_shapes(root, num_images=10, image_size=16, seed=0)
    assert (root / "shapes.json").stat().st_mtime_ns == stamp
    (root / "Images" / "shape_00003.jpg").unlink()  # an incomplete set is not reused
    assert not is_complete_shapes_dataset(root, num_images=10, image_size=16, seed=0)
    assert not list(tmp_path.glob(".s.tmp-*"))  # no temp folder left behind
