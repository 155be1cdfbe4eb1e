"""The scripts' own arguments (``evaluate.py``, ``caption.py``) checked: one line per mistake."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from imgcap.errors import ConfigError, ImgcapError
from imgcap.settings import check_beam_size

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def beam_sizes(value: Any, default: int) -> list[int]:
    """``beam_size=3`` or ``beam_size='[1,3,5]'`` -> a list of positive ints."""
    if value is None:
        value = default
    values = list(value) if OmegaConf.is_list(value) or isinstance(value, list | tuple) else [value]
    try:
        sizes = [check_beam_size(v) for v in values]
    except ConfigError:
        sizes = []
    if not sizes:
        raise ConfigError(
            f"beam_size={value} must be a positive int or a list of them, e.g. beam_size='[1,3]'"
        )
    return sizes


def evaluation_split(cfg: DictConfig) -> str:
    split = cfg.split
    if split not in ("val", "test"):
        raise ConfigError(f"split={split!r} is not one of val, test")
    return str(split)


def checkpoint_argument(cfg: DictConfig) -> str:
    """The checkpoint to evaluate: ``ckpt=`` or its other spelling ``ckpt_path=``, exactly one."""
    given = {k: cfg.get(k) for k in ("ckpt", "ckpt_path") if cfg.get(k) not in (None, "", "???")}
    if len(given) != 1:
        what = "both ckpt= and ckpt_path=" if given else "no checkpoint"
        raise ConfigError(
            f"evaluate.py got {what}: give one, e.g. ckpt=outputs/train/runs/<date>/<time>/"
            "checkpoints/best.ckpt (ckpt_path= is the same setting)"
        )
    return str(next(iter(given.values())))


def collect_images(images: Any) -> list[Path]:
    """A list of paths, or one folder (its images, sorted), or one file."""
    items = (
        list(images) if isinstance(images, list | tuple) or OmegaConf.is_list(images) else [images]
    )
    paths: list[Path] = []
    for item in items:
        path = Path(str(item)).expanduser()
        if path.is_dir():
            paths.extend(sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES))
        elif path.is_file():
            paths.append(path)
        else:
            raise ImgcapError(f"image not found: {path} (images= takes files or a folder)")
    if not paths:
        raise ImgcapError(
            f"no images found in {items} (supported: {', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    return paths
