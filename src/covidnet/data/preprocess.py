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
    square = square_crop(image, size, top_crop)
    side = square.shape[0]
    if side == size:
        return square.copy() if np.shares_memory(square, image) else square
    # Pillow's BILINEAR widens its triangle filter by the reduction factor when it shrinks, so every
    # source pixel contributes (an area-like, anti-aliased average) rather than cv2's 2x2 samples
    # that alias fine lung texture. No reducing_gap: large JPEGs already arrive DCT-downscaled
    # (``read_image(min_side=...)``), and the exact filter costs little at these sizes.
    resized = Image.fromarray(square).resize((int(size), int(size)), Image.Resampling.BILINEAR)
    return np.array(resized)


def crop_box(shape: tuple[int, ...], top_crop: float = TOP_CROP) -> tuple[int, int, int]:
    """(top, left, side) of the square the contract keeps of an image of ``shape`` (H, W): the rows under
    the top ``top_crop`` (``int()`` truncates, as the reference does), then their central square. The one
    place this geometry is written: images, lung masks and the way back (``uncrop_mask``) all use it."""
    height, width = int(shape[0]), int(shape[1])
    cut = int(height * top_crop)
    side = min(height - cut, width)
    return cut + (height - cut - side) // 2, (width - side) // 2, side


def square_crop(image: np.ndarray, size: int = DEFAULT_SIZE, top_crop: float = TOP_CROP) -> np.ndarray:
    """The square of the (H, W) uint8 ``image`` that the contract keeps (``crop_box``), not yet resized."""
    check_options(size, top_crop)
    if not isinstance(image, np.ndarray) or image.ndim != 2 or image.dtype != np.uint8:
        got = f"{image.dtype} array of shape {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ConfigError(f"preprocess needs a 2-D uint8 greyscale array, not {got}")
    if image.size == 0:
        raise ConfigError(f"preprocess needs a non-empty image, not one of shape {image.shape}")
    top, left, side = crop_box(image.shape, top_crop)
    return np.ascontiguousarray(image[top : top + side, left : left + side])


def preprocess_mask(
    mask: np.ndarray, size: int = DEFAULT_SIZE, top_crop: float = TOP_CROP, image_shape: tuple[int, int] | None = None
) -> np.ndarray:
    """A (size, size) uint8 label map: the (H, W) uint8 ``mask`` through the geometry of ``preprocess`` (the
    same top crop and central square), resized with the nearest neighbour so that no new value appears
    (lung masks: 0 background, 255 lung, 127 ignore). ``image_shape``: the (H, W) of the mask's image, when
    it differs (a full-resolution mask of a downsampled image): the mask is first resized to it (nearest),
    so the crop falls on the same image rows and columns."""
    if image_shape is not None and tuple(mask.shape) != tuple(image_shape[:2]):
        height, width = (int(v) for v in image_shape[:2])
        mask = np.array(Image.fromarray(mask).resize((width, height), Image.Resampling.NEAREST))
    square = square_crop(mask, size, top_crop)
    if square.shape[0] == size:
        return square.copy() if np.shares_memory(square, mask) else square
    return np.array(Image.fromarray(square).resize((int(size), int(size)), Image.Resampling.NEAREST))


def uncrop_mask(mask: np.ndarray, shape: tuple[int, int], top_crop: float = TOP_CROP) -> np.ndarray:
    """The way back: a (S, S) label map in stored geometry -> an (H, W) one over the whole image of ``shape``,
    nearest neighbour, 0 outside the square the contract keeps (what a model never saw)."""
    top, left, side = crop_box(shape, top_crop)
    out = np.zeros(tuple(int(v) for v in shape[:2]), np.uint8)
    if side > 0:
        square = Image.fromarray(np.ascontiguousarray(mask, dtype=np.uint8)).resize(
            (side, side), Image.Resampling.NEAREST
        )
        out[top : top + side, left : left + side] = np.asarray(square)
    return out


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
