"""Class activation maps (Grad-CAM, Grad-CAM++) for every architecture in the registry.

The maps come from a maintained library, MONAI's ``monai.visualize`` (``GradCAM``, ``GradCAMpp``), not
from hooks written here: the method is easy to get subtly wrong (which gradient, which pooling, where
the ReLU goes) and MONAI's is tested and used in medical imaging. What is ours is the glue that makes
it safe to call on a model someone else owns (``CamExplainer``), and the colour overlay.

Target layer
------------
The target is the model's ``cam_layer`` (``models/base.py``), the module whose output is the last
feature map; ``target_layer_name`` gives MONAI its dotted name. The defaults:

=====================  =================  ===============================================
architecture           target layer       what it is
=====================  =================  ===============================================
covidnet-cxr-small     ``stages.3``       the last PEPX stage (sum of its modules and path)
covidnet-cxr-large     ``stages.3``       the last PEPX stage
covidnet-cxr3b         ``stages.3``       the last PEPX stage
resnet50               ``features.7``     ``layer4``, the last residual stage
vgg19                  ``features.36``    the last max-pool, after the last conv + ReLU
densenet121            ``features.1``     the ReLU that closes the dense trunk
mobilenet_v3_large     ``features.16``    the last 1x1 conv + BN + hardswish block
efficientnet-lite0     ``conv_head``      the last 1x1 conv + BN + ReLU6, to 1280 channels
=====================  =================  ===============================================

At the input sizes of the registry the last feature map is 1/32 of the input side (15 px at 480),
so the maps are coarse by design; MONAI upsamples them bilinearly to the input's height and width.

What we add around MONAI (MONAI 1.x behaviour, checked when this was written)
----------------------------------------------------------------------------
* **Hooks.** ``ModelWithHooks`` registers a forward and a full backward hook on the target layer and
  keeps no handle, so they would stay on the model for good (and record every later forward). Each
  call builds its own MONAI object and removes exactly the hooks it added, so the model is left as
  it was found; there is nothing to ``close()``.
* **Per-image classes.** MONAI scores ``logits[:, class_idx]``: with one class per image (or ``None``,
  the predicted class, in a batch whose predictions differ) that is a (B, B) block whose sum mixes
  the images' classes, and Grad-CAM++ then fails to broadcast ``exp(score)`` for B > 1. We score
  ``logits.gather(1, class_idx)``, one logit per image, shaped to broadcast against the feature map,
  and valued 0 (``s - s.detach()``: the same gradient): Grad-CAM++ multiplies each image's map by
  ``exp(score)``, a positive factor that the per-image normalisation below cancels anyway, and that
  overflows to inf, then NaN, once a confident model's logit passes ~88.
* **Normalisation.** MONAI's default post-processing maps (min, max) to (1, 0), i.e. it *inverts*
  the map, and leaves a constant map at its constant. We scale each map to [0, 1] (max -> 1) and
  give a constant or non-finite map zeros: a model with a constant output (untrained, or saturated)
  has all-zero gradients, hence an all-zero map, and no NaN may reach an overlay.
* **Gradient mode.** The backward pass needs autograd, so each call runs with grad enabled and
  inference mode off, on a detached copy of the input that requires grad (so frozen weights work
  too): it works from inside ``torch.no_grad()`` or ``torch.inference_mode()``. MONAI puts the model
  in eval mode for the call and restores its training flag afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
import torch
from monai.visualize import GradCAM, GradCAMpp
from monai.visualize.class_activation_maps import ModelWithHooks
from PIL import Image
from torch import nn

from .errors import ConfigError

METHODS = ("gradcam", "gradcam++")
_CAM = {"gradcam": GradCAM, "gradcam++": GradCAMpp}
_HOOK_DICTS = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_backward_hooks")


def target_layer_name(model: nn.Module) -> str:
    """The dotted name of ``model.cam_layer`` in ``model.named_modules()``: MONAI finds layers by name."""
    layer = model.cam_layer
    for name, module in model.named_modules():
        if module is layer:
            return name
    raise ConfigError(f"{type(model).__name__}.cam_layer is not a submodule of the model")


def _normalise(cam: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) -> each map scaled to [0, 1]; a constant or non-finite map becomes zeros."""
    cam = torch.nan_to_num(cam.detach().float(), nan=0.0, posinf=0.0, neginf=0.0)
    flat = cam.flatten(1)
    lo = flat.min(1).values.view(-1, 1, 1, 1)
    span = flat.max(1).values.view(-1, 1, 1, 1) - lo
    out = torch.where(span > 0, (cam - lo) / span.clamp_min(torch.finfo(cam.dtype).tiny), torch.zeros_like(cam))
    return out.clamp_(0.0, 1.0)


class _Hooks(ModelWithHooks):
    """MONAI's hooked model, with one score per image and a way to take its hooks off again."""

    def __init__(self, model: nn.Module, layer_name: str):
        layer = dict(model.named_modules())[layer_name]
        before = {d: set(getattr(layer, d, {})) for d in _HOOK_DICTS}
        inplace = layer.__dict__.get("inplace")  # MONAI turns an in-place target off for the backward hook
        super().__init__(model, layer_name, register_forward=True, register_backward=True)
        self._layer, self._inplace = layer, inplace
        self._added = {d: set(getattr(layer, d, {})) - before[d] for d in _HOOK_DICTS}

    def class_score(self, logits: torch.Tensor, class_idx) -> torch.Tensor:
        idx = torch.as_tensor(class_idx, device=logits.device, dtype=torch.long).reshape(-1, 1)
        score = logits.gather(1, idx.expand(logits.shape[0], 1)).view(-1, 1, 1, 1)  # broadcasts against (B, C, h, w)
        # the same gradient, valued 0: Grad-CAM++ scales each image's map by exp(score), which our
        # per-image normalisation cancels, and which overflows to inf (then NaN) for logits above ~88
        return score - score.detach()

    def remove(self) -> None:
        for d, keys in self._added.items():
            hooks = getattr(self._layer, d, {})
            for k in keys:
                hooks.pop(k, None)
        if self._inplace is not None:
            self._layer.__dict__["inplace"] = self._inplace
        self.activations.clear()
        self.gradients.clear()
        self.score = None


class CamExplainer:
    """Grad-CAM / Grad-CAM++ maps of one model, at its ``cam_layer``; built once, called per batch.

    ``explainer(x)``: ``x`` (B, C, H, W), as the model takes it -> (B, H, W) float32 in [0, 1], one
    map per image for ``class_idx`` (an int for every image, one per image, or ``None`` for each
    image's predicted class).
    """

    def __init__(self, model: nn.Module, method: str = "gradcam", target_layer: str | None = None):
        if method not in _CAM:
            raise ConfigError(f"unknown CAM method {method!r}; available: {', '.join(METHODS)}")
        self.model = model
        self.method = method
        self.target_layer = target_layer or target_layer_name(model)
        if self.target_layer not in dict(model.named_modules()):
            raise ConfigError(f"no layer named {self.target_layer!r} in {type(model).__name__}")

    def _class_idx(self, class_idx: int | Sequence[int] | None, batch: int) -> list[int] | int | None:
        if class_idx is None:
            return None
        if isinstance(class_idx, (torch.Tensor, np.ndarray)):
            class_idx = class_idx.tolist()  # a 0-d one becomes an int
        n = getattr(self.model, "num_classes", None)
        many = not isinstance(class_idx, (int, np.integer))
        values = [int(c) for c in class_idx] if many else [int(class_idx)]
        if many and len(values) != batch:
            raise ConfigError(f"class_idx has {len(values)} entries for a batch of {batch} images")
        bad = [c for c in values if c < 0 or (n is not None and c >= n)]
        if bad:
            raise ConfigError(f"class_idx {bad[0]} is out of range for a model with {n} classes (0..{n - 1})")
        return values if many else values[0]

    def __call__(self, x: torch.Tensor, class_idx: int | Sequence[int] | None = None) -> np.ndarray:
        if x.ndim != 4:
            raise ConfigError(f"expected a (B, C, H, W) batch, got shape {tuple(x.shape)}")
        idx = self._class_idx(class_idx, x.shape[0])
        # MONAI zeroes the weights' gradients; we need none of them (only the feature map's), so the
        # weights are frozen for the call, which also spares computing them, and restored afterwards
        params = [(p, p.requires_grad, p.grad) for p in self.model.parameters()]
        hooks = _Hooks(self.model, self.target_layer)
        try:
            for p, *_ in params:
                p.requires_grad_(False)
            cam = _CAM[self.method](hooks, self.target_layer, postprocessing=_normalise)
            with torch.inference_mode(False), torch.enable_grad():
                # a fresh, non-inference leaf: gradients flow even with frozen weights or an inference tensor
                x = x.detach().clone().requires_grad_(True)
                maps = cam(x, class_idx=idx)
        finally:
            hooks.remove()
            for p, requires_grad, grad in params:
                p.requires_grad_(requires_grad)
                p.grad = grad
        return maps[:, 0].cpu().numpy().astype(np.float32)


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.4, cmap: str = "jet") -> np.ndarray:
    """``image`` (H, W) uint8 grey and ``heat`` (h, w) in [0, 1] -> (H, W, 3) uint8: the heat map in
    colour, blended with weight ``alpha`` over the grey image (heat is resized bilinearly to fit)."""
    image = np.asarray(image)
    heat = np.asarray(heat, dtype=np.float32)
    if image.ndim != 2 or heat.ndim != 2:
        raise ConfigError(f"overlay takes a (H, W) image and a (H, W) heat map, got {image.shape} and {heat.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha must be in [0, 1], not {alpha}")
    if heat.shape != image.shape:
        heat = np.asarray(Image.fromarray(heat).resize(image.shape[::-1], Image.Resampling.BILINEAR))
    heat = np.clip(np.nan_to_num(heat, nan=0.0), 0.0, 1.0)
    colour = matplotlib.colormaps[cmap](heat)[..., :3] * 255.0
    grey = np.repeat(image.astype(np.float32)[..., None], 3, axis=2)
    return np.clip(np.rint((1.0 - alpha) * grey + alpha * colour), 0, 255).astype(np.uint8)


def save_overlay(path: str | Path, image: np.ndarray, heat: np.ndarray, alpha: float = 0.4) -> Path:
    """Write ``overlay(image, heat)`` as a PNG at ``path``; returns the path."""
    path = Path(path)
    Image.fromarray(overlay(image, heat, alpha)).save(path, format="PNG")
    return path
