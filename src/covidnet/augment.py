"""Augmentation on the device, with independent random parameters per image.

The published recipe (translation, rotation, horizontal flip, intensity shift, zoom) as one affine
warp per image through ``affine_grid``/``grid_sample``, plus a brightness factor; ``augment_labels`` warps
a label map (a lung mask) with the same parameters, nearest neighbour, so image and mask stay aligned. torchvision's v2
transforms draw one set of parameters for a whole batch, so a GPU-resident batch would get the same
rotation for every image; kornia would do it per sample but is a large dependency for five numbers
per image, so this is written here. Parameters are drawn on the CPU from a seeded generator and
moved to the device: the same seed gives the same augmentation on CPU and GPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    translate: float = 0.10  # fraction of the image side, each direction
    rotate: float = 10.0  # degrees, each direction
    hflip: float = 0.5  # probability
    brightness: float = 0.10  # multiplicative factor in [1 - b, 1 + b]
    zoom: tuple[float, float] = (0.85, 1.15)

    @property
    def identity(self) -> bool:
        return not (self.translate or self.rotate or self.hflip or self.brightness) and self.zoom == (1.0, 1.0)


def sample_params(n: int, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """(n, 5) parameters per image: angle (rad), zoom, tx, ty (normalised coordinates), flip sign,
    and (n,) brightness factors, drawn in a fixed order so a seed pins them."""
    u = torch.rand(n, 6, generator=generator, dtype=torch.float64)
    angle = (u[:, 0] * 2 - 1) * math.radians(cfg.rotate)
    zoom = cfg.zoom[0] + u[:, 1] * (cfg.zoom[1] - cfg.zoom[0])
    tx = (u[:, 2] * 2 - 1) * cfg.translate * 2  # affine_grid's coordinates span [-1, 1]: 2 units per side
    ty = (u[:, 3] * 2 - 1) * cfg.translate * 2
    flip = torch.where(u[:, 4] < cfg.hflip, -1.0, 1.0)
    bright = 1 + (u[:, 5] * 2 - 1) * cfg.brightness
    return torch.stack([angle, zoom, tx, ty, flip, bright], dim=1).float()


def affine_grid(params: torch.Tensor, shape, device, dtype) -> torch.Tensor:
    """The sampling grid of each image's warp (rotation, zoom, translation, flip of ``params``), for a
    batch of ``shape`` (B, C, H, W)."""
    p = params.to(device, torch.float32)
    angle, zoom, tx, ty, flip, _ = p.unbind(1)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom  # zoom > 1 enlarges: sample a smaller area
    theta = torch.stack(
        [
            torch.stack([cos * flip, -sin, tx], 1),
            torch.stack([sin * flip, cos, ty], 1),
        ],
        1,
    )
    return F.affine_grid(theta, list(shape), align_corners=False).to(dtype)


def augment(x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Warp a float batch (B, C, H, W) in [0, 1] by per-image ``params`` (from ``sample_params``).
    Areas moved in from outside the image are black, as in the reference (Keras fill_mode constant 0)."""
    grid = affine_grid(params, x.shape, x.device, x.dtype)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    bright = params[:, 5].to(x.device, x.dtype)
    return (out * bright.view(-1, 1, 1, 1)).clamp_(0, 1)


def augment_labels(y: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """The same warp as ``augment`` with the same ``params``, for a label map (B, C, H, W) of its images
    (a lung mask): nearest neighbour, so no value appears that was not there, no brightness; areas moved
    in from outside are 0 (background, as the black they are in the image)."""
    grid = affine_grid(params, y.shape, y.device, y.dtype)
    return F.grid_sample(y, grid, mode="nearest", padding_mode="zeros", align_corners=False)
