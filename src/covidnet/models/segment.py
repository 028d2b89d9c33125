"""Lung-field segmentation: a small U-Net, sized for CPU inference, trained from random initialisation.

Read top to bottom: the blocks, a level down and a level up, the config, the network, the presets.

Why a U-Net (Ronneberger, Fischer & Brox, MICCAI 2015) and not torchvision's LR-ASPP or DeepLabv3 on a
MobileNetV3: those predict at 1/8 (LR-ASPP) or 1/16 of the input and upsample, which blurs exactly the
boundary that Dice and HD95 measure; their encoders are made for ImageNet weights, and with none to
download here they train from scratch no better than a plain encoder-decoder, while most of their
parameters sit in wide late stages a two-class, one-channel problem does not need. A U-Net's skip
connections carry full-resolution edges to the output; at base width 16 it has 1.96 M parameters and
costs 0.87 G MACs at 128 px and 3.5 G at 256 px (``covidnet profile lung-unet --size 256``), about the
cost of a MobileNetV3-Large classification at 480 px. Lung segmentation of chest radiographs has been
done this way since (e.g. the JSRT and Montgomery U-Nets), and it is the customary baseline.

What is ours: BatchNorm after every 3x3 convolution (the 2015 U-Net had none), padding so that the
output is the input's size, bilinear upsampling followed by the block's convolutions instead of
transposed convolutions (no checkerboard artefacts), and an input side that need only be a multiple of
``2 ** (len(widths) - 1)`` (other sides are padded and cropped back). The output is one logit per pixel and
class (``num_classes`` 1: lung), at the input's resolution.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from .covidnet import ConvBNReLU

if TYPE_CHECKING:
    from ..contract import Contract


class DoubleConv(nn.Sequential):
    """Two 3x3 convolutions, each with BatchNorm and ReLU: the U-Net's block."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__(ConvBNReLU(c_in, c_out, 3), ConvBNReLU(c_out, c_out, 3))


class Down(nn.Sequential):
    """Half the resolution (2x2 max-pool), then a block."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__(nn.MaxPool2d(2), DoubleConv(c_in, c_out))


class Up(nn.Module):
    """Twice the resolution (bilinear), the skip connection of that level concatenated, then a block."""

    def __init__(self, c_in: int, c_skip: int, c_out: int):
        super().__init__()
        self.block = DoubleConv(c_in + c_skip, c_out)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.block(torch.cat([skip, x], dim=1))


@dataclass(frozen=True)
class UNetConfig:
    """Every architectural number of a U-Net variant. Stored in checkpoints as a dict."""

    widths: tuple[int, ...] = (16, 32, 64, 128, 256)  # channels per level, full resolution first

    def __post_init__(self):
        if len(self.widths) < 2:
            raise ValueError("a U-Net needs at least two levels")

    def to_dict(self) -> dict:
        return asdict(self)


class UNet(nn.Module):
    """The segmenter interface: ``forward(x)`` (B, in_channels, H, W) -> logits (B, num_classes, H, W);
    ``num_classes``, ``in_channels`` and ``get_num_params`` as on the classifiers."""

    def __init__(self, config: UNetConfig = UNetConfig(), num_classes: int = 1, in_channels: int = 1):
        super().__init__()
        self.config, self.num_classes, self.in_channels = config, num_classes, in_channels
        w = config.widths
        self.stem = DoubleConv(in_channels, w[0])
        self.downs = nn.ModuleList(Down(a, b) for a, b in zip(w[:-1], w[1:]))
        self.ups = nn.ModuleList(Up(b, a, a) for a, b in reversed(list(zip(w[:-1], w[1:]))))
        self.head = nn.Conv2d(w[0], num_classes, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        nn.init.normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)

    @property
    def multiple(self) -> int:
        """Input sides that need no padding are multiples of this."""
        return 2 ** (len(self.config.widths) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        m = self.multiple
        pad_h, pad_w = (-h) % m, (-w) % m
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        skips = [self.stem(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        y = skips.pop()
        for up in self.ups:
            y = up(y, skips.pop())
        return self.head(y)[..., :h, :w]

    def get_num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


# The presets: base width 16 (the default, for 128-256 px) and 8 (tests, and the smallest CPUs).
LUNG_UNET = UNetConfig(widths=(16, 32, 64, 128, 256))
LUNG_UNET_TINY = UNetConfig(widths=(8, 16, 32, 64))


def lung_logits(
    model, unit: torch.Tensor, contract: Contract, memory_format=torch.contiguous_format, any_side: bool = False
) -> torch.Tensor:
    """The traceable core (``covidnet export`` writes exactly this graph, with ``any_side``: a dynamic side):
    stored pixels as floats in [0, 1] (B, 1, H, W) -> lung logits (B, 1, H, W): the contract's model input
    (resized to the model's side, normalised), the network, and its logits resized back to H x W (bilinear)."""
    logits = model(contract.model_input(unit, memory_format, any_side)).float()
    if any_side or logits.shape[-2:] != unit.shape[-2:]:
        logits = F.interpolate(logits, size=unit.shape[-2:], mode="bilinear", align_corners=False)
    return logits
