"""SimSiam (Chen & He, "Exploring simple Siamese representation learning", CVPR 2021): the heads and the loss
of ``covidnet pretrain``'s self-supervised task (``tasks/selfsup.py``).

Two augmented views of an image go through the backbone (its pooled last feature map), a projection MLP
(three linear layers, BatchNorm after each, ReLU after the first two) and, for one side, a prediction MLP (a
bottleneck: linear, BatchNorm, ReLU, linear); the loss is the symmetrised negative cosine similarity of each
view's prediction with the other view's projection, the projection's gradient stopped:
``L = D(p1, sg(z2)) / 2 + D(p2, sg(z1)) / 2``, ``D(p, z) = -cos(p, z)``.

Why SimSiam: it needs neither negative pairs (SimCLR, which wants thousands a batch) nor a memory queue or a
momentum encoder (MoCo v2, BYOL), so the batch size only matters to BatchNorm, a CPU or a single GPU suffices,
and its whole training state is the network and its heads, which a resumed run restores exactly. Its known
failure, collapse to a constant output, is watched: the standard deviation of the L2-normalised projections
(``z_std``; the paper's Fig. 2: about ``1 / sqrt(dim)`` when healthy, 0 collapsed) is logged every epoch.

Written here rather than taken from ``lightly`` (whose ``SimSiamProjectionHead``, ``SimSiamPredictionHead`` and
``NegativeCosineSimilarity`` these match, a test checks, weights for weights) because lightly brings
PyTorch Lightning and Hydra for forty lines.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .sslmethod import Method

PROJECTION_DIM = 512  # the projection's output and hidden width (the paper's 2048 is for ResNet-50's features)
PREDICTION_HIDDEN = 128  # the predictor's bottleneck (the paper: a quarter of the output)


class ProjectionHead(nn.Sequential):
    """Linear-BN-ReLU, linear-BN-ReLU, linear-BN (the paper's projection MLP)."""

    def __init__(self, input_dim: int, hidden_dim: int = PROJECTION_DIM, output_dim: int = PROJECTION_DIM):
        super().__init__(
            nn.Linear(input_dim, hidden_dim, bias=False),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, hidden_dim, bias=False),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, output_dim, bias=False),
            nn.BatchNorm1d(output_dim, affine=False),
        )


class PredictionHead(nn.Sequential):
    """Linear-BN-ReLU, linear (the paper's bottleneck predictor)."""

    def __init__(self, dim: int = PROJECTION_DIM, hidden_dim: int = PREDICTION_HIDDEN):
        super().__init__(
            nn.Linear(dim, hidden_dim, bias=False),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, dim),
        )


class Heads(nn.Module):
    """The projection and prediction heads over a backbone's ``num_features`` pooled features."""

    def __init__(self, num_features: int):
        super().__init__()
        self.projection = ProjectionHead(num_features)
        self.prediction = PredictionHead()


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``D(p, z)``: minus the mean cosine similarity of the rows of ``p`` and ``z``."""
    return -F.cosine_similarity(p, z, dim=1).mean()


def simsiam_loss(p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """The symmetrised loss, each projection's gradient stopped."""
    return (negative_cosine(p1, z2.detach()) + negative_cosine(p2, z1.detach())) / 2


class SimSiam(Method):
    """SimSiam's network for the self-supervised task's interface (``sslmethod.Method``): ``(x1, x2)`` -> (loss,
    the standard deviation of the first view's L2-normalised projections)."""

    title = "SimSiam"

    @staticmethod
    def create_heads(backbone: nn.Module, num_features: int) -> Heads:
        return Heads(num_features)

    @staticmethod
    def settings() -> dict:
        """What a checkpoint records of the method."""
        return {"projection": [PROJECTION_DIM, PREDICTION_HIDDEN]}

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.heads.projection(self.pooled(x))
        return z, self.heads.prediction(z)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z1, p1 = self.project(x1)
        z2, p2 = self.project(x2)
        spread = F.normalize(z1.detach(), dim=1).std(0, correction=0).mean()  # a batch of one: 0, not NaN
        return simsiam_loss(p1, p2, z1, z2), spread
