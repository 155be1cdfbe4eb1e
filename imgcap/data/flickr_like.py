"""A generated JPEG set shaped like Flickr8k, for timing whole trials without the real photos.

Flickr8k has 8,091 photos of about 500x375 (some portrait), 5 captions each, and official
6000/1000/1000 split lists (91 images are in none). This generator writes the same shape of set
in the Kaggle layout, so ``data.root=<it>`` with any Flickr8k experiment reads it unchanged::

    Images/1000268201_693b08cb0e.jpg ...          # <digits>_<hex>.jpg, like Flickr ids
    captions.txt                                  # CSV image,caption; 5 captions per image
    Flickr8k_text/Flickr_8k.{train,dev,test}Images.txt
    flickr_like.json                              # parameters and what each image shows

Each picture is a textured scene (grass, sand, sky, water, stone, snow) with one to three
coloured shapes in the left/middle/right of it, big or small, and each caption says what is
drawn in templated but varied words, so a model can learn them and a trial scores above zero.

Images are independent (image ``i`` comes from the seed and ``i`` alone), so the set is made by a
pool of processes and is byte-identical whatever the number of workers. It is written to a
temporary folder and renamed into place; a folder holding ``flickr_like.json`` is complete.

    python -m imgcap.data.flickr_like --root /tmp/flickr_like --images 8091
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from imgcap.atomic import publish_dir

log = logging.getLogger(__name__)

META_FILE = "flickr_like.json"
FORMAT_VERSION = 1
FLICKR8K_IMAGES = 8091
# Flickr8k's official split sizes; smaller sets keep their proportions.
FLICKR8K_SPLITS = {"train": 6000, "dev": 1000, "test": 1000}

# name -> (base RGB, per-pixel noise amplitude, blotch amplitude)
SCENES = {
    "grass": ((70, 140, 50), 22, 30),
    "sand": ((214, 190, 140), 14, 18),
    "sky": ((120, 170, 230), 6, 12),
    "water": ((40, 90, 150), 12, 26),
    "stone": ((128, 128, 122), 20, 24),
    "snow": ((236, 238, 244), 6, 8),
}
# Words for each scene in captions; several so that sentences vary.
SCENE_WORDS = {
    "grass": ("on the grass", "on a green field", "in a grassy field"),
    "sand": ("on the sand", "on a sandy beach", "on the beach"),
    "sky": ("against the sky", "in a blue sky", "against a clear sky"),
    "water": ("on the water", "over blue water", "on a lake"),
    "stone": ("on grey stone", "on a stone wall", "on the pavement"),
    "snow": ("in the snow", "on white snow", "on a snowy field"),
}
COLOURS = {
    "red": (210, 30, 35),
    "orange": (245, 130, 20),
    "yellow": (240, 220, 30),
    "green": (20, 150, 40),
    "blue": (30, 60, 210),
    "purple": (130, 40, 160),
    "black": (15, 15, 15),
    "white": (250, 250, 250),
}
SHAPES = ("circle", "square", "triangle", "ring", "cross")
POSITIONS = ("left", "middle", "right")
WHERE = {
    "left": ("on the left", "at the left"),
    "middle": ("in the middle", "in the centre"),
    "right": ("on the right", "at the right"),
}
# {o} is an object phrase ("a big red circle"), {s} a scene phrase, {w} a place phrase.
ONE = (
    "{o} {w} {s}",
    "{o} {s}",
    "there is {o} {s}",
    "a picture of {o} {s}",
    "{o} {w}",
    "one {c} {k} {s}",
    "a single {c} {k} {w}",
)
MANY = (
    "{objs} {s}",
    "{n} shapes {s}",
    "{objs}",
    "a picture of {objs} {s}",
    "{n} shapes {first} is {o1}",
    "{o1} {w1} and {o2} {w2}",
    "{o1} next to {o2} {s}",
)
NUMBERS = {2: "two", 3: "three"}


def split_sizes(num_images: int) -> dict[str, int]:
    """Flickr8k's 6000/1000/1000 of 8091, scaled to ``num_images`` (each split at least one)."""
    sizes = {
        s: max(1, int(round(num_images * n / FLICKR8K_IMAGES))) for s, n in FLICKR8K_SPLITS.items()
    }
    while sum(sizes.values()) > num_images:  # only for tiny sets, where rounding up adds up
        sizes["train"] -= 1
    return sizes


def _params(num_images: int, seed: int, quality: int) -> dict:
    return {
        "version": FORMAT_VERSION,
        "num_images": int(num_images),
        "seed": int(seed),
        "quality": int(quality),
    }


def image_name(rng: np.random.Generator, index: int) -> str:
    """A Flickr-like ``<digits>_<hex>`` name, unique through ``index`` in the leading digits."""
    digits = 1_000_000_000 + index * 100_000 + int(rng.integers(100_000))
    return f"{digits}_{int(rng.integers(1 << 40)):010x}"


def _size(rng: np.random.Generator) -> tuple[int, int]:
    """(width, height): mostly 500 on the long side, about a quarter portrait."""
    long = 500 if rng.random() < 0.85 else int(rng.integers(400, 501))
    short = int(rng.integers(300, 376)) if rng.random() < 0.7 else 375
    return (short, long) if rng.random() < 0.25 else (long, short)


def _background(rng: np.random.Generator, scene: str, width: int, height: int) -> Image.Image:
    """The scene's colour with soft blotches (coarse noise scaled up) and fine grain."""
    base, grain, blotch = SCENES[scene]
    coarse = rng.integers(-blotch, blotch + 1, size=(6, 8, 3)).astype(np.int16) + np.array(
        base, dtype=np.int16
    )
    img = Image.fromarray(np.clip(coarse, 0, 255).astype(np.uint8), "RGB")
    img = img.resize((width, height), Image.Resampling.BILINEAR)
    pixels = np.asarray(img, dtype=np.int16)
    noise = rng.integers(-grain, grain + 1, size=(height, width, 1), dtype=np.int16)
    return Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8), "RGB")


def _draw(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], rgb) -> None:
    x0, y0, x1, y1 = box
    side = x1 - x0
    if shape == "circle":
        draw.ellipse(box, fill=rgb)
    elif shape == "square":
        draw.rectangle(box, fill=rgb)
    elif shape == "triangle":
        draw.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=rgb)
    elif shape == "ring":
        draw.ellipse(box, outline=rgb, width=max(3, side // 6))
    else:  # cross
        t = max(3, side // 4)
        cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
        draw.rectangle((cx - t // 2, y0, cx + t // 2, y1), fill=rgb)
        draw.rectangle((x0, cy - t // 2, x1, cy + t // 2), fill=rgb)


def _object_phrase(obj: dict) -> str:
    size = "big " if obj["big"] else "small "
    return f"a {size}{obj['colour']} {obj['shape']}"


def make_example(seed: int, index: int) -> tuple[str, Image.Image, dict, list[str]]:
    """Image ``index`` of the set made with ``seed``: (name, image, record, 5 captions)."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, index])))
    name = image_name(rng, index)
    width, height = _size(rng)
    scene = list(SCENES)[int(rng.integers(len(SCENES)))]
    img = _background(rng, scene, width, height)
    draw = ImageDraw.Draw(img)
    n_objects = int(rng.choice([1, 2, 3], p=[0.4, 0.4, 0.2]))
    positions = sorted(
        rng.choice(len(POSITIONS), size=n_objects, replace=False).tolist()
    )  # left to right: captions name them in that order
    objects = []
    third = width // 3
    for slot in positions:
        colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        big = bool(rng.random() < 0.5)
        limit = min(third, height) - 8
        side = int(limit * (rng.uniform(0.65, 0.95) if big else rng.uniform(0.3, 0.45)))
        x0 = slot * third + int(rng.integers(4, max(5, third - side - 3)))
        y0 = int(rng.integers(4, max(5, height - side - 3)))
        box = (x0, y0, x0 + side, y0 + side)
        _draw(draw, shape, box, COLOURS[colour])
        objects.append(
            {"colour": colour, "shape": shape, "big": big, "position": POSITIONS[slot], "box": box}
        )
    captions = _captions(rng, scene, objects)
    record = {"size": [width, height], "scene": scene, "objects": objects}
    return name, img, record, captions


def _captions(rng: np.random.Generator, scene: str, objects: list[dict]) -> list[str]:
    """Five different sentences about the scene and its objects (left to right)."""

    def pick(options):
        return options[int(rng.integers(len(options)))]

    pool: list[str] = []
    templates = ONE if len(objects) == 1 else MANY
    for template in templates:
        o = objects[0]
        words = {
            "s": pick(SCENE_WORDS[scene]),
            "o": _object_phrase(o),
            "w": pick(WHERE[o["position"]]),
            "c": o["colour"],
            "k": o["shape"],
        }
        if len(objects) > 1:
            phrases = [_object_phrase(x) for x in objects]
            words.update(
                objs=", ".join(phrases[:-1]) + " and " + phrases[-1],
                n=NUMBERS[len(objects)],
                first="the one on the left",
                o1=phrases[0],
                o2=phrases[1],
                w1=pick(WHERE[objects[0]["position"]]),
                w2=pick(WHERE[objects[1]["position"]]),
            )
        pool.append(template.format(**words))
    pool = list(dict.fromkeys(pool))  # templates can coincide; captions must differ
    chosen = rng.choice(len(pool), size=5, replace=False)
    return [pool[int(i)] for i in sorted(chosen)]


def _write_chunk(args: tuple[str, int, int, range]) -> list[tuple[str, dict, list[str]]]:
    """Worker: write images ``indices`` into ``folder``; return their names, records, captions."""
    folder, seed, quality, indices = args
    out = []
    for index in indices:
        name, img, record, captions = make_example(seed, index)
        img.save(Path(folder) / f"{name}.jpg", format="JPEG", quality=quality)
        out.append((f"{name}.jpg", record, captions))
    return out


def is_complete(root: str | os.PathLike, num_images: int, seed: int = 0, quality: int = 90) -> bool:
    """True when ``root`` holds a finished set made with exactly these parameters."""
    try:
        meta = json.loads((Path(root) / META_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return meta.get("params") == _params(num_images, seed, quality)


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def generate_flickr_like(
    root: str | os.PathLike,
    num_images: int = FLICKR8K_IMAGES,
    seed: int = 0,
    quality: int = 90,
    workers: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the set into ``root`` (reused when already complete with these parameters).

    ``root`` may be missing or empty; another generated set there is replaced only with
    ``overwrite``; a folder holding anything else is never touched.
    """
    from imgcap.errors import DataError

    root = Path(root).expanduser()
    if num_images < 3:
        raise DataError(f"--images {num_images}: needs at least 3 (one image per split)")
    if not 1 <= quality <= 100:
        raise DataError(f"--quality {quality}: JPEG quality is 1..100")
    if is_complete(root, num_images, seed, quality):
        log.info("%s already holds this set (%d images); reused", root, num_images)
        return root
    if root.exists() and any(root.iterdir()):
        if not (overwrite and (root / META_FILE).is_file()):
            raise DataError(
                f"{root} is not empty and does not hold a generated set with these parameters; "
                "pick another folder (or --overwrite a set made by this generator)"
            )
    workers = max(1, workers or default_workers())
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}.tmp-"))
    try:
        (tmp / "Images").mkdir()
        (tmp / "Flickr8k_text").mkdir()
        # Small chunks keep every worker busy to the end; order is restored by index.
        chunk = max(8, min(64, num_images // (workers * 4) or 1))
        jobs = [
            (str(tmp / "Images"), seed, quality, range(s, min(s + chunk, num_images)))
            for s in range(0, num_images, chunk)
        ]
        if workers == 1:
            results = [_write_chunk(job) for job in jobs]
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                results = list(pool.map(_write_chunk, jobs))
        examples = [e for part in results for e in part]
        with open(tmp / "captions.txt", "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(["image", "caption"])
            writer.writerows((name, c) for name, _, captions in examples for c in captions)
        # Images are independent draws, so blocks in index order are as good as any split; the
        # last few (like Flickr8k's 91) are in no list.
        names = [name for name, _, _ in examples]
        start = 0
        for part, size in split_sizes(num_images).items():
            (tmp / "Flickr8k_text" / f"Flickr_8k.{part}Images.txt").write_text(
                "".join(n + "\n" for n in names[start : start + size])
            )
            start += size
        meta = {
            "params": _params(num_images, seed, quality),
            "images": {name: record for name, record, _ in examples},
        }
        (tmp / META_FILE).write_text(json.dumps(meta, sort_keys=True))  # last: marks complete
        publish_dir(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m imgcap.data.flickr_like",
        description="Write a generated Flickr8k-sized JPEG set in the Kaggle layout.",
    )
    parser.add_argument("--root", required=True, help="folder to write (missing or empty)")
    parser.add_argument("--images", type=int, default=FLICKR8K_IMAGES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality")
    parser.add_argument("--workers", type=int, default=None, help="default: one per CPU core")
    parser.add_argument("--overwrite", action="store_true", help="replace a set made here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from imgcap.errors import ImgcapError

    start = time.perf_counter()
    try:
        root = generate_flickr_like(
            args.root, args.images, args.seed, args.quality, args.workers, args.overwrite
        )
    except ImgcapError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    log.info(
        "flickr_like: %d images in %s (%.1f s)", args.images, root, time.perf_counter() - start
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
