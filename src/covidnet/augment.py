"""Augmentation on the device, with independent random parameters per image.

The published recipe (translation, rotation, horizontal flip, intensity shift, zoom) as one affine
warp per image through ``affine_grid``/``grid_sample``, plus a brightness factor; ``augment_labels`` warps
a label map (a lung mask) with the same parameters, nearest neighbour, so image and mask stay aligned; and,
off by default, **acquisition augmentation**, which makes the differences between scanners and hospitals
less useful to a model (a mitigation of source shortcuts): a gamma curve (exposure and detector response), a
Gaussian blur (resolution, focal spot) and additive noise (quantum noise), each with its own strength per
image. torchvision's v2
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
    gamma: float = 0.0  # |log gamma| at most this: pixels ** gamma, gamma in [e^-g, e^g]
    blur: float = 0.0  # Gaussian blur, sigma in [0, blur] pixels of the model's input
    noise: float = 0.0  # additive Gaussian noise, std in [0, noise] (pixels in [0, 1])

    @property
    def identity(self) -> bool:
        return not (
            self.translate or self.rotate or self.hflip or self.brightness or self.acquisition
        ) and self.zoom == (1.0, 1.0)

    @property
    def acquisition(self) -> bool:
        return bool(self.gamma or self.blur or self.noise)


def sample_params(n: int, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """(n, 6) parameters per image: angle (rad), zoom, tx, ty (normalised coordinates), flip sign and
    brightness factor; with acquisition augmentation, (n, 10): then gamma, blur sigma, noise std and a
    noise seed. Drawn in a fixed order so a seed pins them (the first six as without acquisition)."""
    u = torch.rand(n, 6, generator=generator, dtype=torch.float64)
    angle = (u[:, 0] * 2 - 1) * math.radians(cfg.rotate)
    zoom = cfg.zoom[0] + u[:, 1] * (cfg.zoom[1] - cfg.zoom[0])
    tx = (u[:, 2] * 2 - 1) * cfg.translate * 2  # affine_grid's coordinates span [-1, 1]: 2 units per side
    ty = (u[:, 3] * 2 - 1) * cfg.translate * 2
    flip = torch.where(u[:, 4] < cfg.hflip, -1.0, 1.0)
    bright = 1 + (u[:, 5] * 2 - 1) * cfg.brightness
    params = [angle, zoom, tx, ty, flip, bright]
    if cfg.acquisition:
        v = torch.rand(n, 4, generator=generator, dtype=torch.float64)
        params += [
            torch.exp((v[:, 0] * 2 - 1) * cfg.gamma),
            v[:, 1] * cfg.blur,
            v[:, 2] * cfg.noise,
            torch.floor(v[:, 3] * 2**24),
        ]
    return torch.stack(params, dim=1).float()


def affine_grid(params: torch.Tensor, shape, device, dtype) -> torch.Tensor:
    """The sampling grid of each image's warp (rotation, zoom, translation, flip of ``params``), for a
    batch of ``shape`` (B, C, H, W)."""
    p = params.to(device, torch.float32)
    angle, zoom, tx, ty, flip = p[:, :5].unbind(1)
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
    out = (out * bright.view(-1, 1, 1, 1)).clamp_(0, 1)
    return acquire(out, params[:, 6:]) if params.shape[1] > 6 else out


def augment_labels(y: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """The same warp as ``augment`` with the same ``params``, for a label map (B, C, H, W) of its images
    (a lung mask): nearest neighbour, so no value appears that was not there, no brightness; areas moved
    in from outside are 0 (background, as the black they are in the image)."""
    grid = affine_grid(params, y.shape, y.device, y.dtype)
    return F.grid_sample(y, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def acquire(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Acquisition augmentation of a batch (B, C, H, W) in [0, 1] by per-image (gamma, blur sigma,
    noise std, noise seed): gamma curve, then blur, then noise, clamped to [0, 1]."""
    p = p.to(x.device, torch.float32)
    gamma, sigma, std, seed = p.unbind(1)
    x = x.clamp(min=1e-6) ** gamma.view(-1, 1, 1, 1).to(x.dtype)
    x = gaussian_blur(x, sigma)
    gen = torch.Generator(device=x.device).manual_seed(int(seed[0].item()) if len(seed) else 0)
    noise = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
    return (x + noise * std.view(-1, 1, 1, 1).to(x.dtype)).clamp_(0, 1)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Each image blurred with its own Gaussian (``sigma`` in pixels; 0 leaves it unchanged): separable,
    one grouped convolution per axis, reflect padding."""
    if not bool((sigma > 0).any()):
        return x
    b, c, h, w = x.shape
    radius = max(1, int(torch.ceil(3 * sigma.max()).item()))
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    s = sigma.to(x.dtype).clamp(min=1e-3).view(-1, 1)
    k = torch.exp(-0.5 * (t / s) ** 2)
    k = torch.where(sigma.view(-1, 1) > 0, k, (t == 0).to(x.dtype))  # sigma 0: the identity kernel
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)  # one kernel per image and channel
    y = x.reshape(1, b * c, h, w)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="reflect"), k.view(b * c, 1, 1, -1), groups=b * c)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="reflect"), k.view(b * c, 1, -1, 1), groups=b * c)
    return y.reshape(b, c, h, w)
