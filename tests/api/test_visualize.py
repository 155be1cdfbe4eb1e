"""Attention overlay figures."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from PIL import Image

from imgcap.api.visualize import attention_overlay, render_attention_png, upsample_attention


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
    # The panels, then the colour bar (added with the shared colour scale).
    assert len(fig.axes) == 1 + len(words) + 1
    assert [ax.get_title() for ax in fig.axes[:-1]] == ["image", *words]
    assert fig.axes[-1].get_ylabel() == "attention weight"
    assert path.stat().st_size > 20_000
    with Image.open(path) as png:
        assert png.format == "PNG"
        assert png.size == (5 * 200, 2 * 200)  # 8 panels in rows of 5, 2 in x 100 dpi each


def test_overlay_limits_words_and_checks_shapes():
    fig = attention_overlay(
        _image(64), [f"w{i}" for i in range(30)], _alphas(30, grid=8), max_words=12
    )
    assert len(fig.axes) == 13 + 1  # 12 words, the image, the colour bar
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


def _inside(fig, artist) -> bool:
    box = artist.get_window_extent(fig.canvas.get_renderer())
    whole = fig.bbox
    return box.x0 >= whole.x0 and box.y0 >= whole.y0 and box.x1 <= whole.x1 and box.y1 <= whole.y1


@pytest.mark.parametrize("words", [["a", "dog"], "a dog runs through the green grass".split()])
def test_titles_and_colour_bar_fit_in_the_figure(words):
    """One row (2 inches tall) and two rows: no title or colour-bar label is clipped."""
    fig = attention_overlay(_image(), words, _alphas(len(words)))
    fig.canvas.draw()
    for ax in fig.axes[:-1]:
        assert _inside(fig, ax.title), ax.get_title()
    bar = fig.axes[-1]
    assert _inside(fig, bar.yaxis.label)
    assert all(_inside(fig, t) for t in bar.get_yticklabels() if t.get_text())


def test_one_colour_scale_for_all_panels_or_a_stated_one_per_panel():
    """A diffuse map next to a focused one: on the shared scale the diffuse one stays low
    (it used to be stretched to full red); per panel, the bar says it is relative."""
    grid = 7
    diffuse = np.full(grid * grid, 1.0 / grid**2, dtype=np.float32)
    focused = np.zeros(grid * grid, dtype=np.float32)
    focused[24] = 1.0
    alphas = np.stack([diffuse, focused])
    fig = attention_overlay(_image(70), ["sky", "ball"], alphas)
    norm = fig.axes[-1].collections[0].norm if fig.axes[-1].collections else None
    peak = max(upsample_attention(a, (70, 70), normalize=False).max() for a in alphas)
    bar_limits = fig.axes[-1].get_ylim()
    assert bar_limits == pytest.approx((0.0, peak), rel=1e-5), norm
    shared = np.asarray(fig.axes[1].images[0].get_array(), dtype=np.float32)
    fig_panel = attention_overlay(_image(70), ["sky", "ball"], alphas, scale="panel")
    own = np.asarray(fig_panel.axes[1].images[0].get_array(), dtype=np.float32)
    # jet: low values are blue, the top is dark red: the diffuse panel is red only per panel.
    assert shared[..., 0].mean() < own[..., 0].mean() - 40
    assert fig_panel.axes[-1].get_ylabel() == "attention / panel max"
    assert fig_panel.axes[-1].get_ylim() == pytest.approx((0.0, 1.0))
    with pytest.raises(ValueError, match="scale"):
        attention_overlay(_image(70), ["sky"], alphas, scale="log")
