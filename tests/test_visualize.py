"""Attention overlay figures."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from PIL import Image

from imgcap.visualize import attention_overlay, render_attention_png, upsample_attention


def _image(size: int = 224) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)


def _alphas(steps: int, grid: int = 14) -> torch.Tensor:
    return torch.softmax(
        torch.randn(steps, grid * grid, generator=torch.Generator().manual_seed(0)), dim=-1
    )  # (L, P)


def test_upsample_follows_the_attended_cell_and_is_smooth():
    alpha = np.zeros(7 * 7, dtype=np.float32)
    alpha[0] = 1.0  # top-left cell of a 7x7 grid
    heat = upsample_attention(alpha, (224, 160))  # (H, W)
    assert heat.shape == (224, 160)
    assert heat.max() == pytest.approx(1.0)
    row, col = np.unravel_index(heat.argmax(), heat.shape)
    assert row < 224 / 7 and col < 160 / 7
    assert heat[-1, -1] == 0.0
    assert len(np.unique(heat.round(4))) > 20, "bilinear upsampling should blend, not tile"
    with pytest.raises(AssertionError, match="square grid"):
        upsample_attention(np.ones(10), (8, 8))


def test_overlay_writes_png_with_one_panel_per_word(tmp_path):
    words = "a dog runs through the green grass".split()
    path = tmp_path / "nested" / "attention.png"
    fig = attention_overlay(Image.fromarray(_image()), words, _alphas(len(words) + 1), path=path)
    assert len(fig.axes) == 1 + len(words)
    assert [ax.get_title() for ax in fig.axes] == ["image", *words]
    assert path.stat().st_size > 20_000
    with Image.open(path) as png:
        assert png.format == "PNG"
        assert png.size == (5 * 200, 2 * 200)  # 8 panels in rows of 5, 2 in x 100 dpi each


def test_overlay_limits_words_and_checks_shapes():
    fig = attention_overlay(
        _image(64), [f"w{i}" for i in range(30)], _alphas(30, grid=8), max_words=12
    )
    assert len(fig.axes) == 13
    with pytest.raises(AssertionError, match="attention rows"):
        attention_overlay(_image(64), ["a", "b", "c"], _alphas(2))
    with pytest.raises(AssertionError, match=r"\(H, W, 3\) uint8"):
        attention_overlay(np.zeros((64, 64), dtype=np.float32), ["a"], _alphas(1))


def test_render_returns_png_backed_image_fast():
    words = [f"word{i}" for i in range(15)]
    render_attention_png(_image(), words[:2], _alphas(2))  # warm up fonts and caches
    start = time.perf_counter()
    out = render_attention_png(_image(), words, _alphas(15).numpy())
    elapsed = time.perf_counter() - start
    assert isinstance(out, Image.Image) and out.mode == "RGB"
    assert out.size == (1000, 800)
    assert out.info["png"].startswith(b"\x89PNG")
    assert np.asarray(out).std() > 10, "rendered figure is blank"
    assert elapsed < 3.0, f"rendering took {elapsed:.2f} s"  # ~0.5 s unloaded
