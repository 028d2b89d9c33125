"""From stored uint8 pixels to the model's input tensor: the torch half of the preprocessing contract
(the pixel half is ``data/preprocess.py``). Training, evaluation and prediction all call
``model_input``, with the contract a checkpoint stores under ``preprocess``."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def model_input(x: torch.Tensor, pre: dict, memory_format=torch.contiguous_format) -> torch.Tensor:
    """``x``: (B, 1, H, W) float in [0, 1] -> (B, in_channels, size, size), normalised as the
    checkpoint's preprocessing contract ``pre`` (size, in_channels, mean, std) says."""
    size = pre["size"]
    if size != x.shape[-1]:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    x = x.expand(-1, pre["in_channels"], -1, -1)
    m = torch.as_tensor(pre["mean"], device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.as_tensor(pre["std"], device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return ((x - m) / s).contiguous(memory_format=memory_format)


def image_input(img, pre: dict, device) -> torch.Tensor:
    """One stored (H, W) uint8 image as a batch of one for the model (heat maps, single predictions)."""
    import numpy as np

    return model_input(uint8_to_unit(torch.from_numpy(np.array(img))[None].to(device)), pre)


def uint8_to_unit(x: torch.Tensor) -> torch.Tensor:
    """(B, H, W) uint8 -> (B, 1, H, W) float in [0, 1]."""
    return x.unsqueeze(1).float().div_(255)
