"""THE preprocessing contract, and the image operations it defines: how a file becomes the pixels a dataset
stores, and how stored pixels become a model's input. Written once, by ``covidnet data build``, into the
store (``contract.json``); training reads it from the store and adds the model's half (input size,
channels, normalisation); every checkpoint and ONNX export carries it; ``eval``, ``predict``, ``serve``,
``export`` and the audit read it back. No other module restates a value of it, and every operation it
names is written here, once.

Two halves, one object:

* **pixels** (``stored_size``, ``top_crop``): file -> (stored_size, stored_size) uint8. It is the reference
  COVID-Net's ``process_image_file``: drop the top 8 % of rows (where scanners burn in text and markers),
  take the central square (``crop_box``), resize it to 480 x 480. The reference read with ``cv2.imread``
  and resized with ``cv2.resize`` (bilinear, no anti-aliasing); we decode with ``covidnet.imageio`` and
  resize with an anti-aliased filter (``preprocess``), so pixels differ slightly from the reference's while
  the geometry is the same. A lung mask goes through the same geometry (``preprocess_mask``, nearest
  neighbour) and back (``uncrop_mask``);
* **model input** (``size``, ``in_channels``, ``mean``, ``std``): stored uint8 -> the normalised float
  tensor a network takes (``model_input``; inside the graph of an ONNX export).

Options that later change preprocessing join here as fields, so they travel the same road: per-image
intensity standardisation (``intensity``), and the **lung field** (``lungs``, ``lung_margin``): a pixel is
lung where a segmenter's logit is at least ``LOGIT_THRESHOLD`` (``is_lung``), and the field is that mask
dilated by ``lung_margin`` of the side (``dilate``), for the audit's occlusion and for lung-field input
alike. This module imports no torch at import time.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import ConfigError, CovidnetError
from .files import write_json
from .imageio import read_image, read_image_bytes

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


# --- the contract ------------------------------------------------------------------------------------

CONTRACT_FILE = "contract.json"  # in a built dataset's folder
INTENSITIES = ("none", "equalize", "clahe")
CLAHE_CLIP = 0.01  # scikit-image's default clip limit, stated so that it is part of the contract
LUNG_FIELDS = ("none", "crop", "mask")  # what of the image a classifier sees: all of it, or its lung field
LUNG_MARGIN = 0.03  # a lung mask is dilated by this share of the side: the audit's lungs, a lung field's default


@dataclass(frozen=True)
class Contract:
    """What every image goes through before a model sees it."""

    stored_size: int = DEFAULT_SIZE  # side of the square uint8 images a build stores
    top_crop: float = TOP_CROP  # share of rows cut from the top before the central square
    size: int | None = None  # the model's input side (resized from stored_size); None: stored_size
    in_channels: int = 1  # grey as stored (1) or repeated (3)
    mean: tuple[float, ...] = (0.0,)  # per channel, on pixels scaled to [0, 1]
    std: tuple[float, ...] = (1.0,)
    intensity: str = "none"  # per-image standardisation of the stored pixels: none, equalize, clahe
    lungs: str = "none"  # lung-field input (``covidnet.lungs.field``): none, crop or mask, by the model's segmenter
    lung_margin: float = LUNG_MARGIN  # the lung mask's dilation, share of the side, for ``lungs`` crop or mask

    def __post_init__(self):
        check_options(self.stored_size, self.top_crop)
        if self.intensity not in INTENSITIES:
            raise CovidnetError(f"--intensity must be one of {', '.join(INTENSITIES)}, not {self.intensity!r}")
        if self.lungs not in LUNG_FIELDS:
            raise CovidnetError(f"--lungs must be one of {', '.join(LUNG_FIELDS)}, not {self.lungs!r}")
        if not 0 <= self.lung_margin < 0.5:
            raise CovidnetError(f"--lung-margin must be in [0, 0.5), a share of the side, not {self.lung_margin}")
        object.__setattr__(self, "size", int(self.size or self.stored_size))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))

    # --- the two halves -----------------------------------------------------------------------------

    @property
    def input_size(self) -> int:
        """The model's input side."""
        return self.size

    def load(self, path) -> np.ndarray:
        """A file -> its stored pixels, (stored_size, stored_size) uint8: what the build stores and what
        predict and serve feed."""
        return load_image(path, self.stored_size, self.top_crop)

    def load_bytes(self, data: bytes, name: str = "<upload>", max_pixels: int | None = None) -> np.ndarray:
        """As ``load``, for a file's bytes in memory (uploads); refuses images over ``max_pixels``."""
        return load_image_bytes(data, name, self.stored_size, self.top_crop, max_pixels)

    def pixels(self, image: np.ndarray) -> np.ndarray:
        """A decoded (H, W) uint8 image -> its stored pixels."""
        return preprocess(image, self.stored_size, self.top_crop)

    def standardise(self, images: np.ndarray) -> np.ndarray:
        """Stored pixels (B, S, S) uint8 -> the same with the contract's intensity standardisation, per
        image: scikit-image's histogram equalisation (``equalize``) or CLAHE (``clahe``, contrast-limited
        adaptive equalisation, tiles of 1/8 of the side). Images from another hospital or scanner then
        share a grey-level distribution. ``none`` returns them as they are. Applied by every consumer
        (training, ``LoadedModel``, the ONNX backend) on the stored pixels, before ``model_input``; an ONNX
        graph takes the pixels after it (histogram operations are not in the graph)."""
        if self.intensity == "none":
            return images
        try:
            from skimage import exposure
        except ModuleNotFoundError:
            raise CovidnetError(
                f"this model standardises intensity ({self.intensity}), which needs scikit-image: "
                "pip install scikit-image"
            ) from None
        out = np.empty_like(images)
        for k, img in enumerate(images):
            if self.intensity == "equalize":
                f = exposure.equalize_hist(img, nbins=256)
            else:
                f = exposure.equalize_adapthist(img, kernel_size=max(8, img.shape[-1] // 8), clip_limit=CLAHE_CLIP)
            out[k] = np.clip(np.round(f * 255), 0, 255).astype(np.uint8)
        return out

    def mask(self, mask: np.ndarray, image_shape: tuple[int, int] | None = None) -> np.ndarray:
        """A decoded (H, W) uint8 lung mask of an image (0 background, 255 lung, 127 ignore) -> its stored
        label map, (stored_size, stored_size): the image's top crop and central square, nearest neighbour,
        so mask and image pixels stay aligned. ``image_shape``: the image's (H, W) where the mask's differs
        (a full-resolution mask of a downsampled image)."""
        return preprocess_mask(mask, self.stored_size, self.top_crop, image_shape)

    def uncrop(self, mask: np.ndarray, image_shape: tuple[int, int]) -> np.ndarray:
        """A stored-geometry label map (S, S) -> one over the whole (H, W) image it came from (nearest; 0 in
        the rows and columns the contract crops away): how a predicted lung mask is written for its file."""
        return uncrop_mask(mask, image_shape, self.top_crop)

    def model_input(self, x, memory_format=None, any_side: bool = False):
        """Stored pixels as a float tensor in [0, 1], (B, 1, S, S) -> the network's input, (B,
        in_channels, size, size), normalised. ``any_side``: resize even when S is the model's side (an
        exported graph whose side is dynamic cannot branch on it; resizing to the same side is the
        identity)."""
        import torch
        import torch.nn.functional as F

        size = self.input_size
        if any_side or size != x.shape[-1]:
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        x = x.expand(-1, self.in_channels, -1, -1)
        m = torch.as_tensor(self.mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        s = torch.as_tensor(self.std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        return ((x - m) / s).contiguous(memory_format=memory_format or torch.contiguous_format)

    # --- from the store to the model ----------------------------------------------------------------

    def for_model(
        self,
        size: int | None,
        in_channels: int,
        mean,
        std,
        intensity: str = "none",
        lungs: str = "none",
        lung_margin: float = LUNG_MARGIN,
    ) -> Contract:
        """This store's contract with a model's half filled in (what training writes)."""
        return replace(
            self,
            size=int(size or self.stored_size),
            in_channels=int(in_channels),
            mean=tuple(mean),
            std=tuple(std),
            intensity=intensity,
            lungs=lungs,
            lung_margin=float(lung_margin),
        )

    def check_store(self, store, where: str) -> None:
        """A checkpoint's contract against a store it is asked to read: same stored pixels, or a clear error."""
        theirs = store.contract
        for name in ("stored_size", "top_crop"):
            if getattr(theirs, name) != getattr(self, name):
                raise CovidnetError(
                    f"{where}: built with {name} {getattr(theirs, name)}, but the model was trained on "
                    f"a build with {name} {getattr(self, name)}; rebuild it with the model's settings"
                )

    # --- serialised ---------------------------------------------------------------------------------

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(mean=list(self.mean), std=list(self.std))
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Contract:
        """From a checkpoint's, an export's or a store's dict. A checkpoint written before the contract
        was a class has ``size, stored_size, in_channels, mean, std`` and no ``top_crop``: those builds
        all used the reference's 0.08 (the only value that could reach a checkpoint then)."""
        known = {f.name for f in fields(cls)}
        args = {k: v for k, v in d.items() if k in known}
        if "mean" in args:
            args["mean"], args["std"] = tuple(args["mean"]), tuple(args["std"])
        return cls(**args)

    def write(self, folder: Path) -> None:
        write_json(Path(folder) / CONTRACT_FILE, self.to_dict())

    @classmethod
    def read(cls, folder: Path) -> Contract | None:
        path = Path(folder) / CONTRACT_FILE
        if not path.is_file():
            return None
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (ValueError, TypeError, AttributeError, CovidnetError) as e:  # CovidnetError: a value out of range
            raise CovidnetError(f"{path}: not a readable preprocessing contract ({e})") from None


def contract_of(meta: dict) -> Contract:
    """The contract a checkpoint's or an export's metadata carries."""
    return Contract.from_dict(meta["preprocess"])


def uint8_to_unit(x):
    """Stored pixels, a (B, H, W) uint8 tensor -> (B, 1, H, W) float in [0, 1]: what ``model_input`` takes."""
    return x.unsqueeze(1).float().div_(255)


# --- the lung field ----------------------------------------------------------------------------------

THRESHOLD = 0.5  # a pixel is lung when a segmenter's probability is at least this, that is when its logit
LOGIT_THRESHOLD = float(np.log(THRESHOLD / (1 - THRESHOLD)))  # is at least this (0): the sigmoid is monotone,
# so a mask needs no sigmoid (on 480 px images it cost as much as the segmenter's network)


def is_lung(logits):
    """Lung logits (a NumPy array or a torch tensor) -> a boolean mask of the same shape."""
    return logits >= LOGIT_THRESHOLD


def dilate(lung, margin: float):
    """A lung field (B, 1, S, S) float tensor, 0 or 1 -> the same dilated by ``round(margin * S)`` pixels with
    a square structuring element (max-pooling): the one dilation of the audit and of lung-field input."""
    import torch.nn.functional as F

    r = round(margin * lung.shape[-1])
    return F.max_pool2d(lung, 2 * r + 1, stride=1, padding=r) if r > 0 else lung
