"""Risk (COVID-RiskNet): COVID-19 images in ordered bins of days since symptom onset. An ordinal head (Niu
et al. 2016; Frank & Hall 2001): ``K - 1`` outputs, output ``k`` the logit of P(bin > k), each trained with
binary cross-entropy; the predicted bin is the number of outputs above 0.5, and P(bin = k) = P(> k - 1) -
P(> k) (clipped, renormalised). Trained on the COVID-19 rows of a build whose source gives an offset.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import ConfigError
from ..metrics.bootstrap import format_ci
from .base import as_tensor
from .image import ImageTask

DEFAULT_RISK_BINS = (3.0, 5.0, 10.0)  # days: [0, 3), [3, 5), [5, 10), >= 10


def parse_bins(text: str) -> tuple[float, ...]:
    """``"3,5,10"`` -> (3.0, 5.0, 10.0): the inner edges of the risk bins, in days, increasing."""
    try:
        edges = tuple(float(v) for v in str(text).split(","))
    except ValueError:
        edges = ()
    if not edges or any(e <= 0 for e in edges) or any(b <= a for a, b in zip(edges, edges[1:])):
        raise ConfigError(
            f"--risk-bins {text!r}: give increasing positive day counts, e.g. 3,5,10 for "
            "[0-3), [3-5), [5-10), >=10 days"
        )
    return edges


def bin_names(edges: Sequence[float]) -> list[str]:
    lows = [0.0, *edges]
    return [f"{lo:g}-{hi:g} d" for lo, hi in zip(lows, edges)] + [f">={edges[-1]:g} d"]


class RiskTask(ImageTask):
    name = "risk"
    needs = "COVID-19 images with days since onset (an offset)"
    title = "covidnet risk (days since onset) evaluation"

    def __init__(self, edges: Sequence[float] = DEFAULT_RISK_BINS):
        self.edges = tuple(float(e) for e in edges)
        self.classes = bin_names(self.edges)
        self.outputs = [f"P(>{e:g} d)" for e in self.edges]

    options = (*ImageTask.options, "risk_bins")

    @classmethod
    def from_config(cls, cfg) -> RiskTask:
        return cls(parse_bins(cfg.risk_bins))

    def rows(self, store, split):
        rows = store.rows(split)
        covid = np.array([store.index[i]["label"] == "COVID-19" for i in rows], dtype=bool)
        return rows[covid & ~np.isnan(store.column("offset", rows))]

    def targets(self, store, rows):
        return np.digitize(store.column("offset", rows), self.edges).astype(np.int64)

    def loss(self, out, y):
        import torch
        import torch.nn.functional as F

        k = torch.arange(out.shape[1], device=out.device)
        return F.binary_cross_entropy_with_logits(out.float(), (y[:, None] > k).float())

    def agreement(self, out, y):
        return ((out > 0).sum(1) == y).sum()

    def probabilities(self, out) -> np.ndarray:
        """(N, K-1) cumulative logits -> (N, K) bin probabilities."""
        above = 1.0 / (1.0 + np.exp(-np.asarray(out, dtype=np.float64)))
        ones, zeros = np.ones_like(above[:, :1]), np.zeros_like(above[:, :1])
        p = np.clip(np.concatenate([ones, above], 1) - np.concatenate([above, zeros], 1), 0, None)
        return (p / np.clip(p.sum(1, keepdims=True), 1e-12, None)).astype(np.float32)

    def decode(self, out) -> np.ndarray:
        """Predicted bin: how many 'beyond edge k' outputs exceed 0.5."""
        return (np.asarray(out) > 0).sum(1).astype(np.int64)  # sigmoid(z) > 0.5

    def meta(self):
        return {
            "task": self.name,
            "classes": self.classes,
            "risk_bins": list(self.edges),
            "head": "ordinal: K-1 logits of P(bin > k)",
        }

    def validation(self, y, out):
        from ..metrics.ordinal import risk_point_metrics

        loss = float(self.loss(as_tensor(out), as_tensor(y))) if len(y) else float("nan")
        return {"loss": loss, **risk_point_metrics(y, self.decode(out))}

    def evaluate(self, y, out, patients, sources, meta, resamples, seed, sites=None, views=None):
        from ..metrics.ordinal import risk_metrics

        pred = self.decode(out)
        metrics = risk_metrics(y, pred, self.classes, patients, resamples, seed)
        metrics["predictions"] = [{"true": int(t), "pred": int(q)} for t, q in zip(y, pred)]
        return metrics

    def results(self, out, meta, rule):
        return [
            {
                "task": "risk",
                "bin": self.classes[b],
                "bin_index": int(b),
                "probabilities": {c: float(v) for c, v in zip(self.classes, p)},
            }
            for b, p in zip(self.decode(out), self.probabilities(out))
        ]

    def cam_outputs(self, result):
        return [(max(result["bin_index"] - 1, 0), "risk")]  # the last bin edge it is predicted beyond

    @staticmethod
    def line(result):
        probs = " ".join(f"{c} {p:.3f}" for c, p in result["probabilities"].items())
        return f"days since onset {result['bin']}  [{probs}]"

    def figures(self, metrics, y, out):
        from ..report import plot_confusion

        cm = metrics["confusion_matrix"]
        return [
            (
                "confusion_matrix.png",
                plot_confusion(cm["labels"], np.array(cm["matrix"])),
                "Rows: true bin of days since onset; columns: predicted bin.",
            )
        ]

    def final(self, row):
        return f"val accuracy {row['val_accuracy']:.3f}"

    def summary(self, metrics):
        return ["", "value (95 % CI)"], [
            ["accuracy", format_ci(metrics["accuracy"])],
            ["macro F1", format_ci(metrics["macro_f1"])],
            ["mean absolute bin error", format_ci(metrics["mean_abs_bin_error"])],
        ]
