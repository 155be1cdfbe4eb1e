"""Attention visualisation: the image, then one panel per generated word with its attention map.

Figures are built with ``matplotlib.figure.Figure`` on an Agg canvas, never through pyplot, so
nothing needs a display, no global backend is switched and no figure is left open.

Colours: by default every word panel shares one scale, from 0 to the largest attention weight
in the figure, shown on a colour bar, so a diffuse map looks pale next to a focused one; with
``scale="panel"`` each panel is scaled to its own maximum instead and the bar says so.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import matplotlib
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from PIL import Image

from imgcap.atomic import write_with

__all__ = ["attention_overlay", "render_attention_png", "upsample_attention"]

_PANEL_INCHES = 2.0
_DPI = 100
_MAX_COLS = 5
_TITLE_INCHES = 0.3  # above each row: a 10 pt word title and its padding
_COLOURBAR_INCHES = 0.85  # right of the panels: the bar, its ticks and its label


def _to_rgb_array(image: Image.Image | np.ndarray) -> np.ndarray:
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    assert array.ndim == 3 and array.shape[2] == 3 and array.dtype == np.uint8, (
        f"image must be (H, W, 3) uint8, got {array.shape} {array.dtype}"
    )
    return array


def upsample_attention(
    alpha: np.ndarray, size: tuple[int, int], normalize: bool = True
) -> np.ndarray:
    """Bilinearly resize one attention row to the image.

    Args:
        alpha: (P,) weights over a g x g grid of encoder cells, row-major (P = g * g).
        size: (H, W) of the image.
        normalize: scale the map to [0, 1] by its own maximum; False keeps the weights.

    Returns:
        (H, W) float32 map, in [0, 1] when ``normalize`` (the raw weights sum to 1 over P).
    """
    alpha = np.asarray(alpha, dtype=np.float32).reshape(-1)
    grid = math.isqrt(alpha.size)
    assert grid * grid == alpha.size, f"attention has {alpha.size} cells, not a square grid"
    height, width = size
    resized = Image.fromarray(alpha.reshape(grid, grid)).resize(
        (width, height), resample=Image.Resampling.BILINEAR
    )
    out = np.asarray(resized, dtype=np.float32)
    if not normalize:
        return out
    peak = float(out.max())
    return out / peak if peak > 0 else out


def attention_overlay(
    image: Image.Image | np.ndarray,
    words: list[str],
    alphas: np.ndarray | torch.Tensor,
    path: str | Path | None = None,
    max_words: int = 20,
    *,
    overlay_alpha: float = 0.6,
    cmap: str = "jet",
    scale: str = "shared",
) -> Figure:
    """Plot the image and, for each word, its upsampled attention map over the image.

    Args:
        image: PIL image or (H, W, 3) uint8 array (the un-normalised input picture).
        words: generated words, one per decoding step (no <start>/<pad>).
        alphas: (L, P) attention weights per step, L >= len(words), P = g * g encoder cells.
            Extra rows (e.g. the step that produced <end>) are ignored.
        path: when given, the figure is written there as PNG (parent folders created).
        max_words: at most this many word panels (the first ones).
        scale: ``"shared"``: one colour scale for all word panels, 0 to the largest weight
            shown; ``"panel"``: each panel to its own maximum. Either way a colour bar says it.

    Returns:
        The matplotlib Figure: ``1 + min(len(words), max_words)`` panels in rows of 5, then
        the colour bar's axes (last in ``fig.axes``) when there is a word.
    """
    if scale not in ("shared", "panel"):
        raise ValueError(f"scale must be 'shared' or 'panel', got {scale!r}")
    rgb = _to_rgb_array(image)
    if isinstance(alphas, torch.Tensor):
        alphas = alphas.detach().float().cpu().numpy()
    alphas = np.asarray(alphas, dtype=np.float32)
    assert alphas.ndim == 2, f"alphas must be (L, P), got shape {alphas.shape}"
    assert alphas.shape[0] >= len(words), (
        f"{len(words)} words but only {alphas.shape[0]} attention rows"
    )
    words = list(words)[:max_words]

    n_panels = 1 + len(words)
    n_cols = min(_MAX_COLS, n_panels)
    n_rows = math.ceil(n_panels / n_cols)
    fig_w, fig_h = n_cols * _PANEL_INCHES, n_rows * _PANEL_INCHES
    fig = Figure(figsize=(fig_w, fig_h), dpi=_DPI)
    FigureCanvasAgg(fig)
    height, width = rgb.shape[:2]
    colours = matplotlib.colormaps[cmap]
    maps = [
        upsample_attention(alphas[k], (height, width), normalize=scale == "panel")
        for k in range(len(words))
    ]  # (H, W) each
    top = max((float(m.max()) for m in maps), default=0.0)
    norm = Normalize(0.0, top if scale == "shared" and top > 0 else 1.0)
    word_axes = []
    for k in range(n_panels):
        ax = fig.add_subplot(n_rows, n_cols, k + 1)
        if k == 0:
            ax.imshow(rgb)
        else:
            # Blend in numpy: one imshow per panel instead of two halves the rendering time.
            heat = colours(norm(maps[k - 1]).filled(0.0))[..., :3]
            ax.imshow(((1.0 - overlay_alpha) * rgb + overlay_alpha * 255.0 * heat).astype(np.uint8))
            word_axes.append(ax)
        ax.set_title(words[k - 1] if k > 0 else "image", fontsize=10)
        ax.set_axis_off()
    # Margins in inches, not fractions: a one-row figure is only 2 inches tall, and a
    # fractional top margin clipped its titles. The right margin holds the colour bar.
    # (A constrained layout does the same at twice the rendering time.)
    right = 1.0 - (_COLOURBAR_INCHES / fig_w if word_axes else 0.01)
    top = 1.0 - _TITLE_INCHES / fig_h
    fig.subplots_adjust(left=0.01, right=right, bottom=0.01, top=top, wspace=0.05, hspace=0.2)
    if word_axes:
        inset = 0.08 / fig_h  # room for the end ticks' labels
        cax = fig.add_axes(
            (right + 0.1 / fig_w, 0.01 + inset, 0.15 / fig_w, top - 0.01 - 2 * inset)
        )
        bar = fig.colorbar(ScalarMappable(norm=norm, cmap=colours), cax=cax)
        label = "attention weight" if scale == "shared" else "attention / panel max"
        bar.set_label(label, fontsize=8)
        bar.ax.tick_params(labelsize=7)
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_with(path, lambda f: fig.savefig(f, format="png"))  # whole or not at all
    return fig


def render_attention_png(
    image: Image.Image | np.ndarray,
    words: list[str],
    alphas: np.ndarray | torch.Tensor,
    max_words: int = 20,
) -> Image.Image:
    """Same panels as :func:`attention_overlay`, as an RGB PIL image decoded from the PNG
    rendering (ready for ``wandb.Image``); ``.info`` keeps the raw bytes under "png"."""
    fig = attention_overlay(image, words, alphas, max_words=max_words)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    png = buffer.getvalue()
    out = Image.open(io.BytesIO(png)).convert("RGB")
    out.info["png"] = png
    return out
