"""The interface every registered model has, after timm's: ``forward_features`` gives the last
feature map, ``forward_head`` turns it into logits, ``get_classifier`` / ``reset_classifier`` reach
the last linear layer (transfer learning), ``cam_layer`` is the module whose output Grad-CAM reads,
and ``num_features`` the channels of that feature map."""

from __future__ import annotations

import torch
from torch import nn


class Classifier(nn.Module):
    """Subclasses set ``head`` (feature map -> pre-logits), ``classifier`` (an ``nn.Linear``),
    ``num_features``, ``num_classes``, ``in_channels``, and define ``forward_features`` and
    ``cam_layer``."""

    head: nn.Module
    classifier: nn.Linear

    @property
    def cam_layer(self) -> nn.Module:
        raise NotImplementedError

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.head(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Linear:
        return self.classifier

    def reset_classifier(self, num_classes: int) -> None:
        """A new, freshly initialised last layer for ``num_classes`` classes."""
        self.classifier = nn.Linear(self.classifier.in_features, num_classes)
        nn.init.trunc_normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)
        self.num_classes = num_classes

    def get_num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
