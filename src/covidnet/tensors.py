"""From stored uint8 pixels to the model's input tensor: the torch half of the preprocessing contract
(the pixel half is ``data/preprocess.py``). Training, evaluation and prediction all call
``model_input``, with the contract a checkpoint stores under ``preprocess``."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def model_input(x: torch.Tensor, size: int, in_channels: int, mean, std,
                memory_format=torch.contiguous_format) -> torch.Tensor:
    """``x``: (B, 1, H, W) float in [0, 1] -> (B, in_channels, size, size), normalised."""
    if size != x.shape[-1]:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    x = x.expand(-1, in_channels, -1, -1)
    m = torch.as_tensor(mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.as_tensor(std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return ((x - m) / s).contiguous(memory_format=memory_format)


def uint8_to_unit(x: torch.Tensor) -> torch.Tensor:
    """(B, H, W) uint8 -> (B, 1, H, W) float in [0, 1]."""
    return x.unsqueeze(1).float().div_(255)
