"""Small datasets written on disk by tests: the Kaggle Flickr8k layout (``Images/`` and
``captions.txt``), the original Flickr8k layout, and a Karpathy-style COCO tree."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

RED, BLUE = (230, 20, 20), (20, 20, 230)


def make_image(path: Path, colour: tuple[int, int, int]) -> None:
    """One 16 px JPEG of a single colour (its folder made as needed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16), colour).save(path, format="JPEG", quality=95)


def make_images(folder: Path, names: list[str]) -> None:
    """8 px JPEGs, each of its own colour."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        Image.new("RGB", (8, 8), (i * 20 % 256, 100, 50)).save(folder / name, format="JPEG")


def kaggle_captions(root: Path, rows: list[str]) -> None:
    """``root/captions.txt`` of the Kaggle layout: a header, then ``image,caption`` rows."""
    (root / "captions.txt").write_text("image,caption\n" + "".join(r + "\n" for r in rows))


def make_kaggle(root: Path, n: int = 6, rows: list[str] | None = None) -> list[str]:
    """The Kaggle layout with ``n`` images ``im<i>.jpg`` and two captions each (or ``rows``);
    returns the image names."""
    names = [f"im{i}.jpg" for i in range(n)]
    make_images(root / "Images", names)
    if rows is None:
        rows = [f"{name},a dog runs number {i}" for name in names for i in range(2)]
    kaggle_captions(root, rows)
    return names


def make_original(root: Path, n: int = 6, extra_lines: tuple[str, ...] = ()) -> list[str]:
    """The original Flickr8k layout (``Flicker8k_Dataset/``, ``Flickr8k_text/Flickr8k.token.txt``)
    with ``n`` images and two captions each; returns the image names."""
    names = [f"im{i}.jpg" for i in range(n)]
    make_images(root / "Flicker8k_Dataset", names)
    text = root / "Flickr8k_text"
    text.mkdir()
    lines = [f"{name}#{i}\ta cat sits number {i}" for name in names for i in range(2)]
    (text / "Flickr8k.token.txt").write_text("\n".join(lines + list(extra_lines)) + "\n")
    return names


def make_kaggle_and_token(root: Path, n: int = 6) -> list[str]:
    """Both the Kaggle and the original Flickr8k files over the same (red) images."""
    names = [f"im{i}.jpg" for i in range(n)]
    for name in names:
        make_image(root / "Images" / name, RED)
    kaggle_captions(root, [f"{name},a dog runs number {i}" for name in names for i in range(2)])
    (root / "Flickr8k_text").mkdir()
    lines = [f"{name}#{i}\ta cat sits number {i}" for name in names for i in range(2)]
    (root / "Flickr8k_text" / "Flickr8k.token.txt").write_text("\n".join(lines) + "\n")
    return names


# (filepath, filename, Karpathy split label); train2014 images are red, val2014 images blue.
# "same.jpg" exists in both folders: two different images.
COCO_ENTRIES = [
    ("train2014", "COCO_train2014_000000000001.jpg", "train"),
    ("train2014", "same.jpg", "train"),
    ("val2014", "same.jpg", "restval"),
    ("val2014", "COCO_val2014_000000000002.jpg", "restval"),
    ("val2014", "COCO_val2014_000000000003.jpg", "val"),
    ("val2014", "COCO_val2014_000000000004.jpg", "test"),
]


def coco_caption(filepath: str, filename: str, k: int) -> str:
    colour = "red" if filepath == "train2014" else "blue"
    return f"A {colour} picture number {k} of {filename.split('.')[0].lower()} ."


def make_coco_tree(
    root: Path, json_path: Path | None = None, image_root: Path | None = None
) -> Path:
    """``root/train2014/*.jpg``, ``root/val2014/*.jpg``, ``root/dataset_coco.json`` (or the given
    places); returns the json's path."""
    image_root = image_root or root
    json_path = json_path or root / "dataset_coco.json"
    images = []
    for i, (filepath, filename, split) in enumerate(COCO_ENTRIES):
        make_image(image_root / filepath / filename, RED if filepath == "train2014" else BLUE)
        sentences = [
            {"raw": coco_caption(filepath, filename, k), "tokens": []} for k in range(2 + i % 2)
        ]
        images.append(
            {
                "filepath": filepath,
                "filename": filename,
                "imgid": i,
                "split": split,
                "sentences": sentences,
            }
        )
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps({"images": images, "dataset": "coco"}))
    return json_path
