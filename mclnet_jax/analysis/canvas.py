"""Shared drawing helpers of the figures: a headless canvas, PNG output.

Figures are drawn on matplotlib's Agg renderer (no display needed) and saved
as RGB PNGs that name the library versions (docs/evaluation.md "Figures").
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

DPI = 100


def library_versions() -> dict[str, str]:
    """The versions of the drawing libraries (written with the figures)."""
    # Imported when drawing: matplotlib and scikit-learn take seconds.
    import matplotlib
    import sklearn

    return {
        "matplotlib": matplotlib.__version__,
        "scikit-learn": sklearn.__version__,
    }


def new_figure(width: float, height: float):
    """A figure on its own Agg canvas: headless, no pyplot global state."""
    # Imported when drawing: matplotlib takes seconds to import.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def save(fig, path: str) -> str:
    """Writes an RGB PNG (no alpha: a quarter smaller) with the versions."""
    # Imported when drawing, as matplotlib (canvas.new_figure).
    from PIL import Image, PngImagePlugin

    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fig.canvas.draw()
    pixels = np.asarray(fig.canvas.buffer_rgba())[..., :3]
    versions = library_versions()
    info = PngImagePlugin.PngInfo()
    info.add_text(
        "Software",
        (
            f"mclnet_jax.analysis; matplotlib "
            f"{versions['matplotlib']}; scikit-learn "
            f"{versions['scikit-learn']}"
        ),
    )
    Image.fromarray(pixels).save(
        path, format="PNG", optimize=True, pnginfo=info, dpi=(DPI, DPI)
    )
    return path


def rgb(color: Sequence[int]) -> tuple[float, float, float]:
    return tuple(c / 255.0 for c in color)


def as_1d_int(name: str, value, n: int | None = None) -> np.ndarray:
    value = np.asarray(value)
    if value.ndim != 1 or (n is not None and value.shape[0] != n):
        want = f"length {n}" if n is not None else "1-D"
        raise ValueError(
            f"{name} must be a 1-D array of {want}, got shape {value.shape}."
        )
    if value.size and not np.issubdtype(value.dtype, np.integer):
        raise ValueError(f"{name} must hold integers, got {value.dtype}.")
    return value.astype(np.int64)


def check_positive_int(name: str, value) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, np.integer))
        or value < 1
    ):
        raise ValueError(f"{name} must be a positive int, got {value!r}.")
    return int(value)


def to_uint8(images) -> np.ndarray:
    """[..., H, W, 3] float in [0, 1] or uint8 -> uint8."""
    images = np.asarray(images)
    if images.shape[-1:] != (3,):
        raise ValueError(
            f"images must be [..., H, W, 3] RGB, got shape {images.shape}."
        )
    if images.dtype == np.uint8:
        return images
    return np.clip(np.round(images.astype(np.float32) * 255.0), 0, 255).astype(
        np.uint8
    )
