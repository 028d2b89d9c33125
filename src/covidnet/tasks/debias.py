"""Source-adversarial training (``covidnet train --debias source``): conditional domain-adversarial
training (Ganin et al., JMLR 2016; conditional on the class as in Long et al., NeurIPS 2018, and Li et
al., ECCV 2018).

A small classifier, one linear layer per class, predicts an image's **source** from the network's
pooled features *among images of the same class*; its gradient reaches the backbone through a
gradient-reversal layer scaled by ``--debias-weight``, so while the adversary learns to tell the
hospitals apart, the backbone is pushed to drop what it knows about the hospital beyond the label.
Conditioning on the class matters: when sources contribute different classes, the label itself
predicts the source, and an unconditional adversary would push the disease out of the features too.
Only classes that come from two or more sources in the training split take part, and within each such
class every source weighs the same in the adversary's loss (each image 1 / its class-and-source count):
COVIDx-like data has most of a class from one source, and an adversary that may simply call that source
is right on most images while it learns nothing of the others. Its accuracy is logged the same way
(balanced over each class's sources; chance is 1 / sources). The adversary is used in training only;
checkpoints hold the classifier alone (and the adversary's state for ``--resume``).

Whether it helps is measured, not assumed (``covidnet study shortcuts``, docs/study.md): on phantoms where
one hospital's COVID-19 films carry a burnt-in marker, it did not make the model read the disease on that
hospital's unmarked films, with this adversary or with the two-layer and feature-map adversaries tried
beside it; nor on the real development data. Where the other hospital's films of the class are few, the
adversary sees them too rarely to learn (its balanced accuracy stays at chance); drawn as often as the
marked ones (``--balance-sources``) it tells the hospitals apart, and the reversal still does not remove
the marker.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError


class GradReverse(torch.autograd.Function):
    """Identity forward; the gradient times ``-weight`` backward."""

    @staticmethod
    def forward(ctx, x, weight: float):
        ctx.weight = weight
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -ctx.weight * grad, None


class SourceAdversary(nn.Module):
    """One linear source classifier per class, over pooled features."""

    def __init__(self, num_features: int, num_classes: int, num_sources: int):
        super().__init__()
        self.heads = nn.Linear(num_features, num_classes * num_sources)
        self.num_classes, self.num_sources = num_classes, num_sources

    def forward(self, pooled: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Source logits (B, S), each image's from the head of its own class."""
        out = self.heads(pooled).view(-1, self.num_classes, self.num_sources)
        return out[torch.arange(len(y), device=y.device), y]


class Debiased(nn.Module):
    """The classifier with the adversary on its pooled features: ``(logits, source logits)``."""

    def __init__(self, model: nn.Module, adversary: SourceAdversary, weight: float):
        super().__init__()
        self.model, self.adversary, self.weight = model, adversary, weight

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.model.forward_features(x)
        pooled = features.float().mean((2, 3))
        return self.model.forward_head(features), self.adversary(GradReverse.apply(pooled, self.weight), y)


def source_index(sources: list[str], labels: np.ndarray, option: str, why: str = "") -> tuple[np.ndarray, list, list]:
    """Each training image's source as a number, the source names, and the classes that come from two or more
    sources; where none does, ``option`` (``--debias source``, ``--balance-sources``) is refused in one line."""
    names = sorted(set(sources))
    index = np.array([names.index(s) for s in sources], dtype=np.int64)
    mixed = [int(c) for c in np.unique(labels) if len(set(index[labels == c])) > 1]
    if not mixed:
        raise ConfigError(
            f"{option} needs a class that comes from two or more sources in the training split; here each "
            f"class comes from one source ({', '.join(names)}){why}"
        )
    return index, names, mixed


def source_targets(sources: list[str], labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, list]:
    """Per training image: its source's index, and its weight in the adversary's loss: 1 / the number of
    training images of its class and source when its class comes from two or more sources, else 0 (it
    takes no part); and the source names. A dataset where no class does is refused in one line."""
    index, names, mixed = source_index(
        sources, labels, "--debias source", ", so there is no source signal to remove beyond the label"
    )
    weight = np.zeros(len(labels), dtype=np.float32)
    for c in mixed:
        for s in set(index[labels == c].tolist()):
            group = (labels == c) & (index == s)
            weight[group] = 1.0 / group.sum()
    return index, weight, names


def adversary_loss(source_logits: torch.Tensor, sources: torch.Tensor, weight: torch.Tensor, per_image: float = 0.0):
    """The adversary's weighted cross-entropy of the source over a batch (``weight`` from ``source_targets``),
    and the weighted count of right calls and the weights' sum (their ratio over an epoch: the adversary's
    accuracy, balanced over each class's sources).

    ``per_image``: the mean weight of the images the epoch draws. Given, the loss is the batch's weighted sum
    over ``per_image`` times the batch's size, so every batch is on one scale and the epoch's losses add up
    to the loss balanced over the sources. Without it, the batch's own weighted mean: right for one batch
    that holds the epoch, but over many batches it weighs a rare source's images far less than their
    weight says, since each batch without one gives the common source's images the whole loss."""
    take = weight > 0
    zero = torch.zeros((), device=source_logits.device)
    if not bool(take.any()):
        return source_logits.sum() * 0.0, zero, zero
    logits, target, w = source_logits[take].float(), sources[take], weight[take]
    ce = F.cross_entropy(logits, target, reduction="none")
    scale = per_image * len(source_logits) if per_image > 0 else w.sum()
    return (w * ce).sum() / scale, (w * (logits.argmax(1) == target)).sum(), w.sum()
