"""Synthetic "shapes" dataset in the Kaggle Flickr8k layout, for the demo, tests and CI.

Each image shows one or two coloured shapes on a lightly noisy grey background; two shapes sit in
different halves (left/right) so captions can say where. Output under ``root``::

    Images/shape_00000.jpg ...
    captions.txt                                  # CSV image,caption; 5 captions per image
    Flickr8k_text/Flickr_8k.{train,dev,test}Images.txt
    shapes.json                                   # parameters + every shape's box (pixels)

The same parameters give byte-identical files (seeded NumPy PCG64, fixed JPEG settings, sorted
JSON), and the whole set is written to a temporary folder and renamed into place, so a folder
that holds ``shapes.json`` is always complete.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from imgcap.atomic import publish_dir

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 70, 220),
    "yellow": (235, 210, 40),
}
SHAPES = ("circle", "square", "triangle")
META_FILE = "shapes.json"
FORMAT_VERSION = 2

# Templates; {a} is the left (or only) shape, {b} the right one, {where} the single shape's place.
# Kept short so that the colour and shape words carry most of each caption: long shared phrases
# ("on the left and a ... on the right") would let a caption that ignores the image match other
# images' references well. Every two-shape caption names the left shape first, except the
# "right of" one, which says so.
_TWO = (
    "a {a} and a {b}",
    "a {a} left of a {b}",
    "a {b} right of a {a}",
    "a {a} next to a {b}",
    "two shapes a {a} and a {b}",
    "a {a} beside a {b}",
)
_ONE = (
    "a {a}",
    "a {a} {where}",
    "one {a}",
    "a single {a}",
    "just one {a} {where}",
    "a lone {a}",
)
_WHERE = {"left": "on the left", "middle": "in the middle", "right": "on the right"}


def _params(num_images: int, image_size: int, seed: int, split: tuple[float, float, float]) -> dict:
    return {
        "version": FORMAT_VERSION,
        "num_images": int(num_images),
        "image_size": int(image_size),
        "seed": int(seed),
        "split": [float(x) for x in split],
    }


def _draw_shape(
    draw: ImageDraw.ImageDraw, shape: str, box: list[int], colour: tuple[int, int, int]
) -> None:
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=colour)


def _place(rng: np.random.Generator, size: int, where: str) -> list[int]:
    """A square box (x0, y0, x1, y1), inclusive pixels, inside the given third/half of the image."""
    side = int(rng.integers(max(4, size * 22 // 100), max(5, size * 36 // 100) + 1))
    half = size // 2
    lo, hi = {
        "left": (0, half - side),
        "right": (half, size - side),
        "middle": (size // 4, size - size // 4 - side),
    }[where]
    margin = max(1, size // 32)
    x0 = int(rng.integers(max(margin, lo), max(margin, hi - margin) + 1))
    y0 = int(rng.integers(margin, size - side - margin + 1))
    return [x0, y0, x0 + side - 1, y0 + side - 1]


def _make_image(rng: np.random.Generator, size: int) -> tuple[Image.Image, list[dict], list[str]]:
    """One image, its shape records and its 5 captions."""
    base = int(rng.integers(200, 246))
    noise = rng.integers(-8, 9, size=(size, size, 1), dtype=np.int16)
    pixels = np.clip(base + noise, 0, 255).astype(np.uint8).repeat(3, axis=2)
    img = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(img)
    colour_names = list(COLOURS)
    n_shapes = 1 if rng.random() < 0.3 else 2
    # Two shapes always differ in colour or kind so every caption names them unambiguously.
    kinds: list[tuple[str, str]] = []
    while len(kinds) < n_shapes:
        kind = (
            colour_names[int(rng.integers(len(colour_names)))],
            SHAPES[int(rng.integers(len(SHAPES)))],
        )
        if kind not in kinds:
            kinds.append(kind)
    places = (
        ["left", "right"] if n_shapes == 2 else [("left", "middle", "right")[int(rng.integers(3))]]
    )
    records = []
    for (colour, shape), where in zip(kinds, places, strict=True):
        box = _place(rng, size, where)
        _draw_shape(draw, shape, box, COLOURS[colour])
        records.append({"colour": colour, "shape": shape, "position": where, "box": box})
    names = [f"{r['colour']} {r['shape']}" for r in records]
    if n_shapes == 2:
        pool = [t.format(a=names[0], b=names[1]) for t in _TWO]
    else:
        pool = [t.format(a=names[0], where=_WHERE[places[0]]) for t in _ONE]
    chosen = rng.choice(len(pool), size=5, replace=False)
    return img, records, [pool[int(i)] for i in sorted(chosen)]


def is_complete_shapes_dataset(
    root: str | os.PathLike,
    num_images: int = 2000,
    image_size: int = 64,
    seed: int = 0,
    split: tuple[float, float, float] = (0.8, 0.1, 0.1),
) -> bool:
    """True when ``root`` holds a finished generated set made with exactly these parameters."""
    root = Path(root)
    try:
        with open(root / META_FILE) as f:
            meta = json.load(f)
    except (OSError, json.JSONDecodeError):
        return False
    if meta.get("params") != _params(num_images, image_size, seed, split):
        return False
    images = root / "Images"
    return (
        images.is_dir()
        and sum(1 for _ in images.iterdir()) == num_images
        and (root / "captions.txt").is_file()
    )


def generate_shapes(
    root: str | os.PathLike,
    num_images: int = 2000,
    image_size: int = 64,
    seed: int = 0,
    split: tuple[float, float, float] = (0.8, 0.1, 0.1),
    overwrite: bool = False,
) -> Path:
    """Write the shapes dataset into ``root`` (reused as is when already complete); returns ``root``.

    ``root`` may be missing or empty; a different generated set there is replaced only with
    ``overwrite`` (anything else in ``root`` is never deleted).
    """
    root = Path(root).expanduser()
    if is_complete_shapes_dataset(root, num_images, image_size, seed, split):
        return root
    if root.exists() and any(root.iterdir()):
        if not (overwrite and (root / META_FILE).is_file()):
            from imgcap.errors import DataError

            raise DataError(
                f"{root} is not empty and does not hold a shapes set with these parameters; "
                "pick another data.root or delete the folder"
            )
    if num_images < 3:
        raise ValueError("num_images must be at least 3 (one image per split)")
    params = _params(num_images, image_size, seed, split)
    rng = np.random.Generator(np.random.PCG64(seed))

    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}.tmp-"))
    try:
        (tmp / "Images").mkdir()
        (tmp / "Flickr8k_text").mkdir()
        names, boxes, rows = [], {}, []
        for i in range(num_images):
            img, records, captions = _make_image(rng, image_size)
            name = f"shape_{i:05d}.jpg"
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=92, subsampling=0, optimize=False)
            (tmp / "Images" / name).write_bytes(buf.getvalue())
            names.append(name)
            boxes[name] = records
            rows.extend((name, c) for c in captions)
        with open(tmp / "captions.txt", "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(["image", "caption"])
            writer.writerows(rows)
        # Images are i.i.d., so contiguous blocks are as good a split as any.
        n_train = int(round(num_images * split[0]))
        n_val = int(round(num_images * split[1]))
        parts = {
            "train": names[:n_train],
            "dev": names[n_train : n_train + n_val],
            "test": names[n_train + n_val :],
        }
        for part, part_names in parts.items():
            (tmp / "Flickr8k_text" / f"Flickr_8k.{part}Images.txt").write_text(
                "".join(n + "\n" for n in part_names)
            )
        # Written last: its presence marks a complete set.
        meta = {"params": params, "colours": COLOURS, "images": boxes}
        (tmp / META_FILE).write_text(json.dumps(meta, sort_keys=True, indent=0))
        publish_dir(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root
