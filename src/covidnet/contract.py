"""THE preprocessing contract: how a file becomes the pixels a dataset stores, and how stored pixels
become a model's input. Written once, by ``covidnet data build``, into the store (``contract.json``);
training reads it from the store and adds the model's half (input size, channels, normalisation);
every checkpoint and ONNX export carries it; ``eval``, ``predict``, ``serve``, ``export`` and the
audit read it back. No other module restates a value of it.

Two halves, one object:

* **pixels** (``stored_size``, ``top_crop``): file -> (stored_size, stored_size) uint8, the reference
  COVID-Net's ``process_image_file`` (``covidnet.data.preprocess``); a lung mask goes through the same
  geometry (``mask``, nearest neighbour) and back (``uncrop``);
* **model input** (``size``, ``in_channels``, ``mean``, ``std``): stored uint8 -> the normalised float
  tensor a network takes (``model_input``; inside the graph of an ONNX export).

Options that later change preprocessing (lung fields, intensity standardisation) join here as fields,
so they travel the same road. This module imports no torch at import time.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np

from .data.preprocess import (
    DEFAULT_SIZE,
    TOP_CROP,
    check_options,
    load_image,
    load_image_bytes,
    preprocess,
    preprocess_mask,
    uncrop_mask,
)
from .errors import CovidnetError
from .files import write_json

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
