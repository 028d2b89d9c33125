"""What every method of the self-supervised task (``tasks/selfsup.py``) shares: a backbone (the registry's
interface: ``forward_features``) with the method's heads, and the hooks the loop calls around each step, which
do nothing unless a method keeps state outside its network (MoCo's key encoder and queue)."""

from __future__ import annotations

import torch
from torch import nn


class Method(nn.Module):
    """``(x1, x2)`` -> (loss, spread, anything kept after the step); a method defines ``title``,
    ``create_heads``, ``settings`` and ``forward``."""

    title = ""

    def __init__(self, backbone: nn.Module, heads: nn.Module):
        super().__init__()
        self.backbone, self.heads = backbone, heads

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's last feature map, averaged over space, in float32."""
        return self.backbone.forward_features(x).float().mean((2, 3))

    def before_step(self) -> None:
        """Nothing, unless the method keeps state outside its trained network."""

    def after_step(self, extra, gather) -> None:
        """Nothing, unless the method keeps something of the step (``extra``, gathered from every process by
        ``gather``)."""
