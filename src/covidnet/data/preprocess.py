"""The pixel half of the preprocessing contract (``covidnet.contract``): file -> ``load_image`` -> stored pixels.

The dataset build, prediction and the HTTP service reach these through ``Contract.load`` (or
``Contract.pixels`` on an array from ``covidnet.data.imageio``) with the contract the build wrote, so a
model is never served images prepared differently from those it was trained on.

It is the reference COVID-Net's ``process_image_file``: drop the top 8 % of rows (where scanners burn
in text and markers), take the central square, resize it to 480 x 480. The reference read with
``cv2.imread`` and resized with ``cv2.resize`` (bilinear, no anti-aliasing); we decode with
``covidnet.data.imageio`` and resize with an anti-aliased filter (see ``preprocess``), so pixels differ
slightly from the reference's while the geometry is the same.
"""

from __future__ import annotations

import math
import os

import numpy as np
from PIL import Image

from covidnet.data.imageio import read_image, read_image_bytes
from covidnet.errors import ConfigError

TOP_CROP = 0.08  # the reference's top_percent
DEFAULT_SIZE = 480  # the reference's input size
MIN_SIZE = 16


def preprocess(image: np.ndarray, size: int = DEFAULT_SIZE, top_crop: float = TOP_CROP) -> np.ndarray:
    """A (size, size) uint8 image: the (H, W) uint8 ``image`` less its top ``top_crop`` of rows,
    centre-cropped to a square and resized."""
    check_options(size, top_crop)
    if not isinstance(image, np.ndarray) or image.ndim != 2 or image.dtype != np.uint8:
        got = f"{image.dtype} array of shape {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ConfigError(f"preprocess needs a 2-D uint8 greyscale array, not {got}")
    if image.size == 0:
        raise ConfigError(f"preprocess needs a non-empty image, not one of shape {image.shape}")

    cropped = image[int(image.shape[0] * top_crop) :]  # int() truncates, as the reference does
    height, width = cropped.shape
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = np.ascontiguousarray(cropped[top : top + side, left : left + side])
    if side == size:
        return square.copy() if np.shares_memory(square, image) else square
    # Pillow's BILINEAR widens its triangle filter by the reduction factor when it shrinks, so every
    # source pixel contributes (an area-like, anti-aliased average) rather than cv2's 2x2 samples
    # that alias fine lung texture. No reducing_gap: large JPEGs already arrive DCT-downscaled
    # (``read_image(min_side=...)``), and the exact filter costs little at these sizes.
    resized = Image.fromarray(square).resize((int(size), int(size)), Image.Resampling.BILINEAR)
    return np.array(resized)


def load_image(path: str | os.PathLike[str], size: int = DEFAULT_SIZE, top_crop: float = TOP_CROP) -> np.ndarray:
    """The file at ``path``, read and preprocessed: what every part of the project calls on a file.

    Raises ``ImageReadError`` for a file that cannot be read, ``ConfigError`` for bad arguments.
    """
    return preprocess(read_image(path, min_side=_min_side(size, top_crop)), size=size, top_crop=top_crop)


def load_image_bytes(
    data: bytes,
    name: str = "<upload>",
    size: int = DEFAULT_SIZE,
    top_crop: float = TOP_CROP,
    max_pixels: int | None = None,
) -> np.ndarray:
    """As ``load_image``, for a file's bytes already in memory (the HTTP service's uploads); ``name``
    is used in messages, ``max_pixels`` refuses larger images before decoding them."""
    image = read_image_bytes(data, name, min_side=_min_side(size, top_crop), max_pixels=max_pixels)
    return preprocess(image, size=size, top_crop=top_crop)


def _min_side(size: int, top_crop: float) -> int:
    # Ask the reader for a short side big enough that the square left after the top crop is still
    # >= size, so a DCT-downscaled JPEG is never upsampled back to ``size``.
    check_options(size, top_crop)
    return math.ceil(size / (1.0 - top_crop))


def check_options(size: int, top_crop: float) -> None:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < MIN_SIZE:
        raise ConfigError(f"size must be an integer >= {MIN_SIZE}, not {size!r}")
    if isinstance(top_crop, bool) or not isinstance(top_crop, (int, float, np.floating, np.integer)):
        raise ConfigError(f"top_crop must be a number in [0, 0.5), not {top_crop!r}")
    if not (0.0 <= top_crop < 0.5):  # also rejects NaN
        raise ConfigError(f"top_crop must be in [0, 0.5), not {top_crop!r}")
