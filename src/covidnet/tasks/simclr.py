"""SimCLR (Chen et al., "A simple framework for contrastive learning of visual representations", ICML 2020): the
third method of ``covidnet pretrain``'s self-supervised task (``tasks/selfsup.py``, ``--ssl-method simclr``).

Two views of each of a batch's ``B`` images go through the backbone (its pooled last feature map) and a
projection MLP (linear, BatchNorm, ReLU, linear, BatchNorm: lightly's ``SimCLRProjectionHead``, SimCLR v2's
head of two layers) to ``2B`` L2-normalised embeddings. The loss is NT-Xent: for each embedding, a
cross-entropy that picks its image's other view out of the other ``2B - 1`` embeddings of the batch, at
temperature ``T``.

Why SimCLR beside SimSiam and MoCo v2: on the development data, neither of those put into the backbone what a
linear probe reads better than random weights, and MoCo v2's loss did not fall at all, while in-batch NT-Xent,
asked the simplest question (``scripts/view_separability.py``: which of a batch's films is this view's), learned
it on the same films within 150 steps (``docs/training.md``). Its negatives are the batch's own, so it wants
large batches in the paper (4,096); here a batch of 16 or 32 gives 30 or 62 negatives, which that instrument
shows is enough for the films to be told apart. It has no state beyond the network and its heads, so a resumed
run continues exactly. Under torchrun each process contrasts its own share of the batch (lightly's
``gather_distributed=False``).

Settings: a 128-dimensional output and a hidden width equal to the backbone's feature width, as MoCo v2's head
here; temperature 0.2, MoCo v2's and the view-separability instrument's, fixed before any run here. A test
checks the head and the loss against lightly's ``SimCLRProjectionHead`` and ``NTXentLoss``, number for number;
written here for the reason ``tasks/simsiam.py`` gives.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .sslmethod import Method

OUTPUT_DIM = 128
TEMPERATURE = 0.2


class ProjectionHead(nn.Sequential):
    """Linear, BatchNorm, ReLU, linear, BatchNorm (SimCLR's MLP head as lightly writes it)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int = OUTPUT_DIM):
        super().__init__(
            nn.Linear(input_dim, hidden_dim, bias=False),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, output_dim, bias=False),
            nn.BatchNorm1d(output_dim),
        )


class Heads(nn.Module):
    """The projection head over a backbone's ``num_features`` pooled features."""

    def __init__(self, num_features: int):
        super().__init__()
        self.projection = ProjectionHead(num_features, num_features)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = TEMPERATURE) -> torch.Tensor:
    """NT-Xent of two views' embeddings ``(B, D)``: each of the ``2B`` picks its pair among the other ``2B - 1``."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    logits = (z @ z.T) / temperature
    logits = logits.masked_fill(torch.eye(len(z), dtype=torch.bool, device=z.device), float("-inf"))
    b = len(z1)
    target = torch.cat([torch.arange(b, 2 * b), torch.arange(b)]).to(z.device)
    return F.cross_entropy(logits, target)


class SimCLR(Method):
    """SimCLR's network for the self-supervised task's interface (``sslmethod.Method``): ``(x1, x2)`` -> (loss,
    the standard deviation of the first view's L2-normalised projections)."""

    title = "SimCLR"

    @staticmethod
    def create_heads(backbone: nn.Module, num_features: int) -> Heads:
        return Heads(num_features)

    @staticmethod
    def settings() -> dict:
        """What a checkpoint records of the method."""
        return {"projection": [OUTPUT_DIM], "temperature": TEMPERATURE}

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z1, z2 = self.heads.projection(self.pooled(x1)), self.heads.projection(self.pooled(x2))
        spread = F.normalize(z1.detach(), dim=1).std(0, correction=0).mean()  # a batch of one: 0, not NaN
        return nt_xent(z1, z2), spread
