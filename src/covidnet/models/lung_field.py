"""The lung-field classifier (``covidnet train --lungs crop|mask``): a classifier that sees only the lungs.

It is a registered model, ``lung-field``, like any other: a checkpoint of one is rebuilt by
``create_model("lung-field", **arch_args)`` and loads its state dict, which holds the segmenter's weights
beside the classifier's. ``arch_args`` name the classifier (``classifier``: its arch and arch_args), the
segmenter (``segmenter``: arch, arch_args and its own preprocessing contract) and what to do with the lung
field (``mode``, ``margin``, and the classifier's normalisation ``mean`` and ``std``, which its input is
undone by): all copied from the training run's contract when the model is made (``lung_field_model``).

Its forward takes the classifier's usual input (the contract's ``model_input``), segments it with the
frozen segmenter, and

* ``mask``: sets every pixel outside the lung mask (dilated by ``margin`` of the side, ``contract.dilate``)
  to the mean of those pixels, so markers, text, borders and the mediastinum carry no information beyond
  their mean grey;
* ``crop``: resamples the bounding box of the dilated lung mask, squared about its centre, to the whole
  input (bilinear), so the lungs fill the frame and the borders fall away;

then runs the classifier on the result. Because the segmenter is part of the network, the lung field is
applied identically wherever the network runs: training (after augmentation, on the image the classifier
is about to see), ``eval``, ``predict``, ``serve``, the audit, and inside the graph ``covidnet export``
writes. An image where no lung is found is passed as it is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..contract import LUNG_FIELDS, Contract, dilate, is_lung
from ..errors import ConfigError
from .base import Classifier
from .segment import lung_logits

ARCH = "lung-field"  # the registry's name of the wrapper


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
    ``segmenter``: a segmentation network; ``lung_contract``: the segmenter's contract; ``mode`` (crop or
    mask) and ``margin``: the lung field; ``mean``/``std``: the classifier's input normalisation, undone to
    segment. It has the registry's interface (``models/base.py``), the classifier's: features, head, CAM
    layer."""

    def __init__(
        self, net: Classifier, segmenter: nn.Module, lung_contract: Contract, mode: str, margin: float, mean, std
    ):
        super().__init__()
        if mode not in LUNG_FIELDS[1:]:
            raise ConfigError(f"a lung-field classifier needs --lungs crop or mask, not {mode!r}")
        self.net, self.segmenter = net, segmenter.eval().requires_grad_(False)
        self.lung_contract, self.mode, self.margin = lung_contract, mode, float(margin)
        self.register_buffer("mean", torch.tensor(float(mean[0])), persistent=False)
        self.register_buffer("std", torch.tensor(float(std[0])), persistent=False)
        for name in ("num_features", "num_classes", "in_channels"):
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
    """The classifier itself: ``net`` of a lung-field model, the model otherwise (``--freeze-backbone``,
    ``--init`` and precise BatchNorm act on it)."""
    return model.net if isinstance(model, LungFieldClassifier) else model


def build(
    num_classes: int,
    in_channels: int,
    *,
    classifier: dict,
    segmenter: dict,
    mode: str,
    margin: float,
    mean,
    std,
    create,
) -> LungFieldClassifier:
    """The registry's builder (``create``: the registry's ``create_model``, handed in by it): both networks
    made from their arch and arch_args, untrained; a checkpoint's state dict fills them."""
    net = create(classifier["arch"], **classifier["arch_args"])
    if (net.num_classes, net.in_channels) != (num_classes, in_channels):
        raise ConfigError(
            f"lung-field: the classifier has {net.num_classes} outputs and {net.in_channels} channels, "
            f"not {num_classes} and {in_channels}"
        )
    seg = create(segmenter["arch"], **segmenter["arch_args"])
    return LungFieldClassifier(net, seg, Contract.from_dict(segmenter["preprocess"]), mode, margin, mean, std)


def lung_field_model(
    net: Classifier, segmenter: nn.Module, segmenter_meta: dict, contract: Contract
) -> LungFieldClassifier:
    """``net`` behind the trained ``segmenter`` (``segmenter_meta``: its arch, arch_args, preprocess and where
    it came from), as the classifier ``contract`` (with ``lungs`` crop or mask) says: what training makes.
    Its ``arch`` and ``arch_args`` are those ``create_model`` rebuilds it from."""
    model = LungFieldClassifier(
        net,
        segmenter,
        Contract.from_dict(segmenter_meta["preprocess"]),
        contract.lungs,
        contract.lung_margin,
        contract.mean,
        contract.std,
    )
    model.arch = ARCH
    model.arch_args = {
        "num_classes": net.num_classes,
        "in_channels": net.in_channels,
        "classifier": {"arch": net.arch, "arch_args": net.arch_args},
        "segmenter": dict(segmenter_meta),
        "mode": contract.lungs,
        "margin": float(contract.lung_margin),
        "mean": list(contract.mean),
        "std": list(contract.std),
    }
    return model
