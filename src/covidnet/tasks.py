"""What a network is trained to output, as training, evaluation and prediction see it: a *task*.

* ``classification``: COVIDx's classes, softmax, cross-entropy (the default; what a checkpoint without a
  ``task`` key is).
* ``severity`` (COVIDNet-S): two bounded scores, geographic extent and opacity extent, each 0-8. The
  head has two outputs ``z``; a score is ``8 * sigmoid(z)``, so predictions stay on the scale, and
  the loss is the binary cross-entropy between ``sigmoid(z)`` and ``score / 8`` (the fractional-logit
  loss for bounded outcomes, Papke & Wooldridge 1996): its gradient is ``sigmoid(z) - score / 8``,
  well behaved at the bounds where a squared error on a sigmoid saturates.
* ``risk`` (COVID-RiskNet): COVID-19 images in ordered bins of days since symptom onset. An ordinal
  head (Niu et al. 2016; Frank & Hall 2001): ``K - 1`` outputs, output ``k`` the logit of
  P(bin > k), each trained with binary cross-entropy; the predicted bin is the number of outputs
  above 0.5, and P(bin = k) = P(> k - 1) - P(> k) (clipped, renormalised).

A task says which rows of a built dataset it can use (those with its targets), what the targets are,
the loss, how outputs decode, the validation metrics training logs, and what the checkpoint must carry
so that ``covidnet eval`` and ``predict`` need no flags restating it.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .data.records import BINARY_CLASSES, CLASSES
from .data.severity import SCORE_MAX, SCORES
from .errors import ConfigError

TASKS = ("classification", "severity", "risk")
DEFAULT_RISK_BINS = (3.0, 5.0, 10.0)  # days: [0, 3), [3, 5), [5, 10), >= 10


def parse_bins(text: str) -> tuple[float, ...]:
    """``"3,5,10"`` -> (3.0, 5.0, 10.0): the inner edges of the risk bins, in days, increasing."""
    try:
        edges = tuple(float(v) for v in str(text).split(","))
    except ValueError:
        edges = ()
    if not edges or any(e <= 0 for e in edges) or any(b <= a for a, b in zip(edges, edges[1:])):
        raise ConfigError(f"--risk-bins {text!r}: give increasing positive day counts, e.g. 3,5,10 for "
                          "[0-3), [3-5), [5-10), >=10 days")
    return edges


def bin_names(edges: Sequence[float]) -> list[str]:
    lows = [0.0, *edges]
    return [f"{lo:g}-{hi:g} d" for lo, hi in zip(lows, edges)] + [f">={edges[-1]:g} d"]


class Task:
    name = "classification"
    outputs: list[str]  # one name per network output
    agreement_name = "acc"  # what ``agreement`` sums, as the training log names it

    def rows(self, store, split: str) -> np.ndarray:
        return store.rows(split)

    def targets(self, store, rows: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def agreement(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Summed over the batch on the device (no synchronisation): correct predictions, or absolute errors."""
        raise NotImplementedError

    def meta(self) -> dict:
        """What the checkpoint carries for this task."""
        return {"task": self.name}


class ClassificationTask(Task):
    def __init__(self, classes: Sequence[str], weights: torch.Tensor | None = None):
        self.outputs = list(classes)
        self.weights = weights

    def targets(self, store, rows):
        return store.labels(rows, binary=tuple(self.outputs) == BINARY_CLASSES)

    def loss(self, out, y):
        return F.cross_entropy(out, y, weight=None if self.weights is None else self.weights.to(out.device))

    def agreement(self, out, y):
        return (out.argmax(1) == y).sum()

    def meta(self):
        return {"task": self.name, "classes": list(self.outputs)}


class SeverityTask(Task):
    name = "severity"
    scale = SCORE_MAX
    agreement_name = "mae"

    def __init__(self):
        self.outputs = list(SCORES)

    def rows(self, store, split):
        rows = store.rows(split)
        y = self.targets(store, rows)
        return rows[~np.isnan(y).any(1)]

    def targets(self, store, rows):
        return np.stack([store.column(s, rows) for s in SCORES], axis=1).astype(np.float32)

    def loss(self, out, y):
        return F.binary_cross_entropy_with_logits(out.float(), y / self.scale)

    def agreement(self, out, y):
        return (torch.sigmoid(out.float()) * self.scale - y).abs().mean(1).sum()

    def decode(self, out: torch.Tensor) -> np.ndarray:
        """Network outputs -> scores on the 0-8 scale, (N, 2)."""
        return (torch.sigmoid(out.float()) * self.scale).numpy()

    def meta(self):
        return {"task": self.name, "scores": list(SCORES), "score_range": [0.0, self.scale],
                "head": "8 * sigmoid(z), fractional-logit (BCE) loss on score / 8"}


class RiskTask(Task):
    name = "risk"

    def __init__(self, edges: Sequence[float] = DEFAULT_RISK_BINS):
        self.edges = tuple(float(e) for e in edges)
        self.classes = bin_names(self.edges)
        self.outputs = [f"P(>{e:g} d)" for e in self.edges]

    def rows(self, store, split):
        rows = store.rows(split)
        covid = np.array([store.index[i]["label"] == "COVID-19" for i in rows], dtype=bool)
        return rows[covid & ~np.isnan(store.column("offset", rows))]

    def targets(self, store, rows):
        return np.digitize(store.column("offset", rows), self.edges).astype(np.int64)

    def loss(self, out, y):
        k = torch.arange(out.shape[1], device=out.device)
        return F.binary_cross_entropy_with_logits(out.float(), (y[:, None] > k).float())

    def agreement(self, out, y):
        return ((out > 0).sum(1) == y).sum()

    def probabilities(self, out: torch.Tensor) -> np.ndarray:
        """(N, K-1) cumulative logits -> (N, K) bin probabilities."""
        above = torch.sigmoid(out.float())
        ones, zeros = torch.ones_like(above[:, :1]), torch.zeros_like(above[:, :1])
        p = (torch.cat([ones, above], 1) - torch.cat([above, zeros], 1)).clamp_min(0)
        return (p / p.sum(1, keepdim=True).clamp_min(1e-12)).numpy()

    def decode(self, out: torch.Tensor) -> np.ndarray:
        """Predicted bin: how many 'beyond edge k' outputs exceed 0.5."""
        return (out > 0).sum(1).numpy().astype(np.int64)  # sigmoid(z) > 0.5

    def meta(self):
        return {"task": self.name, "classes": self.classes, "risk_bins": list(self.edges),
                "head": "ordinal: K-1 logits of P(bin > k)"}


def task_from_meta(meta: dict) -> Task:
    """The task a checkpoint was trained for (classification when it does not say)."""
    name = meta.get("task", "classification")
    if name == "severity":
        return SeverityTask()
    if name == "risk":
        return RiskTask(meta["risk_bins"])
    return ClassificationTask(meta.get("classes", CLASSES))
