"""What a person looks at: a radiograph with its lung masks drawn over it, and the page of the worst cases.

Colours: the predicted lungs tinted red with a red outline, the annotated lungs outlined in green, the
annotation's ignore pixels tinted blue. Matplotlib is used through ``Figure`` objects only, never pyplot.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np

from ..metrics.segmentation import boundary

PRED, TRUTH, IGNORED = (230, 40, 40), (40, 220, 60), (60, 120, 255)
TINT = 0.35


def overlay(image: np.ndarray, pred: np.ndarray, truth: np.ndarray | None = None, ignore=None) -> np.ndarray:
    """An (H, W, 3) uint8 picture of the (H, W) uint8 ``image`` with the predicted mask (bool) tinted and
    outlined, and, when given, the annotated mask outlined and its ignore pixels tinted."""
    rgb = np.repeat(np.asarray(image, np.float32)[..., None], 3, axis=2)
    for mask, colour in ((pred, PRED), (ignore, IGNORED)):
        if mask is not None:
            m = np.asarray(mask, bool)
            rgb[m] = (1 - TINT) * rgb[m] + TINT * np.array(colour, np.float32)
    rgb[boundary(pred)] = PRED
    if truth is not None:
        rgb[boundary(truth)] = TRUTH
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def png_bytes(array: np.ndarray) -> bytes:
    """An (H, W) or (H, W, 3) uint8 array as PNG bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(array, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def worst_cases_figure(panels: Sequence[np.ndarray], captions: Sequence[str], cols: int = 4):
    """A grid of overlays (``overlay``), each captioned (its file name and Dice)."""
    from matplotlib.figure import Figure

    cols = max(1, min(cols, len(panels)))
    rows = max(1, -(-len(panels) // cols))
    fig = Figure(figsize=(3.0 * cols, 3.3 * rows), dpi=110, layout="constrained")
    for k in range(rows * cols):
        ax = fig.add_subplot(rows, cols, k + 1)
        ax.set_axis_off()
        if k < len(panels):
            ax.imshow(panels[k], interpolation="nearest")
            ax.set_title(captions[k].replace("$", r"\$"), fontsize=8)
    return fig


def dice_histogram(dice: np.ndarray):
    """Per-image Dice of both lungs, as a histogram."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.0, 3.2), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    values = dice[np.isfinite(dice)]
    ax.hist(values, bins=np.linspace(min(0.5, float(values.min(initial=1.0))), 1.0, 26), color="#4a7bd0")
    ax.set_xlabel("Dice, both lungs (per image)")
    ax.set_ylabel("images")
    return fig
