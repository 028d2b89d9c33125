"""Raghu et al.'s control for ImageNet transfer ("Transfusion", NeurIPS 2019, section 5, "Mean Var init"):
random weights that keep only the per-layer scale of the pretrained ones.

A "layer" here is one parameter tensor. Every floating-point parameter of the network but its classifier
(the last linear layer, which starts afresh for the task as it does with ``--init imagenet``) is redrawn
i.i.d. from N(m, s^2), where m and s are the mean and the (population) standard deviation of that same
tensor in the ImageNet-initialised network: each convolution's weight (and bias, where it has one), each
BatchNorm's weight (gamma) and bias (beta), each hidden linear layer's weight and bias (VGG's and
MobileNet's heads). The first convolution is taken as ``--init imagenet`` loads it, i.e. for one input
channel summed over RGB. BatchNorm's running mean and variance are reset to 0 and 1: they are statistics of
ImageNet activations, not weights, and the first training steps (and precise BN) measure the new ones. A
tensor of one element keeps its value (it has no spread to draw from).

What survives is each tensor's location and spread; what is destroyed is every relation between its
elements, i.e. the features. A network so initialised and one initialised from ImageNet differ only in
what the pretrained weights *encode*, so the gap between them is the value of ImageNet's features, and
the gap between mean-var and ``--init random`` the value of its scaling alone.
"""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def mean_var_(model: nn.Module, seed: int, keep: nn.Module | None = None) -> list[str]:
    """Redraw ``model``'s parameters in place as described above, from a generator seeded with ``seed``
    (same seed, same weights), leaving ``keep``'s (default: ``model.get_classifier()``). Returns the names of
    the redrawn tensors, in ``named_parameters`` order."""
    keep = model.get_classifier() if keep is None else keep
    kept = {id(p) for p in keep.parameters()}
    gen = torch.Generator().manual_seed(seed)
    redrawn = []
    for name, p in model.named_parameters():
        if id(p) in kept or not p.is_floating_point() or p.numel() < 2:
            continue
        mean, std = p.mean().item(), p.std(correction=0).item()
        p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype).mul_(std).add_(mean))
        redrawn.append(name)
    for m in model.modules():
        if getattr(m, "track_running_stats", False):  # BatchNorm (and any norm layer keeping running statistics)
            m.reset_running_stats()
    return redrawn
