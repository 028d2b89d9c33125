"""Group DRO (``covidnet train --group-dro``): minimise the worst group's loss rather than the average
(Sagawa, Koh, Hashimoto & Liang, "Distributionally robust neural networks for group shifts", ICLR 2020).

The groups are (class, source) pairs of the training split: a model that reads the hospital does well on the
groups a hospital's look predicts and badly on the rest (hospital B's few COVID-19 films, cohen's few normal
ones), and group DRO puts its weight where the loss is worst. Each step, as in the paper's Algorithm 1 with
minibatches: every group present in the batch has its mean loss ``l_g`` plus the **group-size adjustment**
``C / sqrt(n_g)`` (``n_g``: the group's training images; their Section 3.3: a small group's loss is an
underestimate of its population loss), its weight is updated online ``q_g <- q_g exp(eta * adjusted l_g)``
and the weights renormalised, and the step minimises ``sum_g q_g * adjusted l_g`` over the groups present.
The weights ``q`` are training state: a resumed run continues with them. Unlike the paper's code, a group
absent from the batch keeps its weight (its adjustment alone would otherwise raise it every step).

Compared with ``--balance-sources``, which draws a rare group's few images dozens of times an epoch, group
DRO draws images as they come and weighs their losses; whether that keeps balance's within-source gain
without its cost is what ``covidnet study shortcuts`` measures (variant ``dro``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def group_index(labels: np.ndarray, sources: np.ndarray) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Each training image's group number and the groups as (class, source) pairs, in a fixed order."""
    pairs = sorted(set(zip(labels.tolist(), sources.tolist())))
    number = {p: k for k, p in enumerate(pairs)}
    return np.array([number[p] for p in zip(labels.tolist(), sources.tolist())], dtype=np.int64), pairs


class GroupDRO:
    """The online group weights and the robust loss; ``groups``: each training image's group number."""

    def __init__(self, groups: np.ndarray, step: float, adjustment: float, device):
        self.groups = torch.from_numpy(groups).to(device)
        counts = torch.bincount(self.groups, minlength=int(groups.max()) + 1).double()
        self.adjust = (adjustment / counts.sqrt()).float()
        self.q = torch.full((len(counts),), 1.0 / len(counts), device=device)
        self.step = step
        self.worst = torch.zeros((), device=device)  # this epoch's largest adjusted group loss of a batch

    def loss(self, logits: torch.Tensor, y: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """The robust loss of a batch (positions ``pos`` of the training rows), updating the weights."""
        per_image = F.cross_entropy(logits, y, reduction="none")
        g = self.groups[pos]
        k = len(self.q)
        n = torch.zeros(k, device=logits.device).index_add_(0, g, torch.ones_like(per_image))
        total = torch.zeros(k, device=logits.device, dtype=per_image.dtype).index_add_(0, g, per_image)
        present = n > 0
        adjusted = total / n.clamp_min(1) + self.adjust.to(total.dtype)
        with torch.no_grad():
            self.q = torch.where(present, self.q * torch.exp(self.step * adjusted.detach()), self.q)
            self.q = self.q / self.q.sum()
            self.worst = torch.maximum(self.worst, adjusted.detach().masked_fill(~present, -torch.inf).max())
        return (self.q * adjusted * present).sum()

    def state_dict(self) -> dict:
        return {"q": self.q.detach().cpu()}

    def load_state_dict(self, state: dict) -> None:
        self.q = state["q"].to(self.q.device)
