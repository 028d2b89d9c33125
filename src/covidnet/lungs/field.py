"""Lung-field input (``covidnet train --lungs crop|mask``): the classifier sees only the lungs.

A model trained with ``--lungs`` is a ``LungFieldClassifier``: a trained lung segmenter (``covidnet lungs
train``), frozen, in front of the classifier. Its forward takes the classifier's usual input (the
contract's ``model_input``), segments it, and

* ``mask``: sets every pixel outside the lung mask (dilated by the contract's ``lung_margin`` of the side)
  to the mean of those pixels, so markers, text, borders and the mediastinum carry no information beyond
  their mean grey;
* ``crop``: resamples the bounding box of the dilated lung mask, squared about its centre, to the whole
  input (bilinear), so the lungs fill the frame and the borders fall away;

then runs the classifier on the result. Because the segmenter is part of the network, the lung field is
applied identically wherever the network runs: training (after augmentation, on the image the classifier
is about to see), ``eval``, ``predict``, ``serve``, the audit, and inside the graph ``covidnet export``
writes. The checkpoint holds the segmenter's weights beside the classifier's (``lung_model`` in its
metadata), so a model file is all a user needs. An image where no lung is found is passed as it is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..contract import LUNG_FIELDS, Contract, contract_of, dilate, is_lung
from ..errors import ConfigError
from ..models import create_model
from ..models.base import Classifier

__all__ = [
    "LUNG_FIELDS",
    "LungFieldClassifier",
    "apply_lung_field",
    "classifier_of",
    "lung_logits",
    "wrap",
]


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


def _extent(present: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, N) 0/1 along one axis -> the first and last index where it is 1 (0 and N-1 where it never is)."""
    n = present.shape[-1]
    idx = torch.arange(n, device=present.device, dtype=present.dtype)
    any_ = present.amax(-1) > 0
    first = torch.where(present > 0, idx, torch.full_like(idx, n)).amin(-1)
    last = torch.where(present > 0, idx, torch.full_like(idx, -1)).amax(-1)
    return torch.where(any_, first, torch.zeros_like(first)), torch.where(any_, last, torch.full_like(last, n - 1))


def apply_lung_field(unit: torch.Tensor, lung: torch.Tensor, mode: str) -> torch.Tensor:
    """Pixels in [0, 1] (B, 1, H, W) and their dilated lung field (B, 1, H, W, 0 or 1) -> the lung-field
    image (B, 1, H, W): ``mask`` (outside set to its own mean) or ``crop`` (the field's bounding box, squared
    about its centre, resampled to H x W; zeros beyond the image). An image whose field is empty is
    returned as it is."""
    empty = lung.flatten(1).amax(1).view(-1, 1, 1, 1) <= 0
    lung = torch.where(empty, torch.ones_like(lung), lung)
    if mode == "mask":
        outside = 1.0 - lung
        fill = (unit * outside).sum((2, 3), keepdim=True) / outside.sum((2, 3), keepdim=True).clamp_min(1.0)
        return unit * lung + fill * outside
    if mode != "crop":
        raise ConfigError(f"unknown lung field {mode!r}; one of {', '.join(LUNG_FIELDS[1:])}")
    h, w = unit.shape[-2:]
    y0, y1 = _extent(lung[:, 0].amax(-1))  # rows holding lung
    x0, x1 = _extent(lung[:, 0].amax(-2))  # columns
    # the box in grid_sample's normalised coordinates (align_corners=False: -1 and 1 are the outer edges)
    ny0, ny1 = 2 * y0 / h - 1, 2 * (y1 + 1) / h - 1
    nx0, nx1 = 2 * x0 / w - 1, 2 * (x1 + 1) / w - 1
    half = torch.maximum(ny1 - ny0, nx1 - nx0) / 2
    cy, cx = (ny0 + ny1) / 2, (nx0 + nx1) / 2
    ty = (2 * torch.arange(h, device=unit.device, dtype=unit.dtype) + 1) / h - 1
    tx = (2 * torch.arange(w, device=unit.device, dtype=unit.dtype) + 1) / w - 1
    gy = cy[:, None, None] + ty[None, :, None] * half[:, None, None]
    gx = cx[:, None, None] + tx[None, None, :] * half[:, None, None]
    grid = torch.stack([gx.expand(-1, h, w), gy.expand(-1, h, w)], dim=-1)
    return F.grid_sample(unit, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class LungFieldClassifier(Classifier):
    """A classifier behind a frozen lung segmenter (the module's docstring). ``net``: the classifier;
    ``segmenter``: a ``covidnet lungs train`` network; ``lung_contract``: the segmenter's contract;
    ``contract``: the classifier's, whose ``lungs`` and ``lung_margin`` say what to do and whose
    ``mean``/``std`` undo the normalisation of its input. It has the registry's interface
    (``models/base.py``), the classifier's: features, head, CAM layer, arch_args."""

    def __init__(self, net: Classifier, segmenter: nn.Module, lung_contract: Contract, contract: Contract):
        super().__init__()
        if contract.lungs not in LUNG_FIELDS[1:]:
            raise ConfigError(f"a lung-field classifier needs --lungs crop or mask, not {contract.lungs!r}")
        self.net, self.segmenter = net, segmenter.eval().requires_grad_(False)
        self.lung_contract, self.mode, self.margin = lung_contract, contract.lungs, contract.lung_margin
        self.register_buffer("mean", torch.tensor(contract.mean[0]), persistent=False)
        self.register_buffer("std", torch.tensor(contract.std[0]), persistent=False)
        for name in ("num_features", "num_classes", "in_channels", "arch_args"):
            if hasattr(net, name):
                setattr(self, name, getattr(net, name))

    def train(self, mode: bool = True):
        super().train(mode)
        self.segmenter.eval()  # frozen: its BatchNorm statistics stay the trained ones
        return self

    def lung_field(self, unit: torch.Tensor) -> torch.Tensor:
        """Pixels in [0, 1] (B, 1, S, S) -> the segmenter's lung mask dilated by the margin (B, 1, S, S, 0 or 1)."""
        with torch.no_grad():
            logits = lung_logits(self.segmenter, unit, self.lung_contract)
            return dilate(is_lung(logits).float(), self.margin)

    def field(self, x: torch.Tensor) -> torch.Tensor:
        """The classifier's input (B, C, S, S), normalised -> the same with only the lung field kept."""
        unit = x[:, :1].float() * self.std + self.mean
        out = apply_lung_field(unit, self.lung_field(unit), self.mode)
        return (
            ((out - self.mean) / self.std)
            .to(x.dtype)
            .expand(-1, x.shape[1], -1, -1)
            .contiguous(
                memory_format=torch.channels_last
                if x.is_contiguous(memory_format=torch.channels_last)
                else torch.contiguous_format
            )
        )

    @property
    def head(self) -> nn.Module:
        return self.net.head

    @property
    def cam_layer(self) -> nn.Module:
        return self.net.cam_layer

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_features(self.field(x))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.net.forward_head(features)

    def get_classifier(self) -> nn.Linear:
        return self.net.get_classifier()

    def reset_classifier(self, num_classes: int) -> None:
        self.net.reset_classifier(num_classes)
        self.num_classes = num_classes


def classifier_of(model: nn.Module) -> nn.Module:
    """The classifier itself: ``net`` of a lung-field model, the model otherwise (``--freeze-backbone``
    and ``--init`` act on it)."""
    return model.net if isinstance(model, LungFieldClassifier) else model


def wrap(net: Classifier, lung_meta: dict, contract: Contract, state: dict | None = None) -> LungFieldClassifier:
    """``net`` behind the segmenter ``lung_meta`` describes (``covidnet.train``'s ``lung_model``), with the segmenter's
    trained weights ``state`` when given (training; a saved classifier loads its whole state dict)."""
    segmenter = create_model(lung_meta["arch"], **lung_meta["arch_args"])
    if state is not None:
        segmenter.load_state_dict(state)
    return LungFieldClassifier(net, segmenter, contract_of(lung_meta), contract)
