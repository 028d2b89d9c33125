"""Severity (COVIDNet-S): two bounded scores, geographic extent and opacity extent, each 0-8. The head has
two outputs ``z``; a score is ``8 * sigmoid(z)``, so predictions stay on the scale, and the loss is the
binary cross-entropy between ``sigmoid(z)`` and ``score / 8`` (the fractional-logit loss for bounded
outcomes, Papke & Wooldridge 1996): its gradient is ``sigmoid(z) - score / 8``, well behaved at the bounds
where a squared error on a sigmoid saturates. Trained on the rows of a build with ``--severity`` scores.
"""

from __future__ import annotations

import numpy as np

from ..data.severity import SCORE_MAX, SCORES
from ..metrics.bootstrap import format_ci
from .base import as_tensor
from .image import ImageTask


class SeverityTask(ImageTask):
    name = "severity"
    scale = SCORE_MAX
    agreement_name = "mae"
    needs = "images with severity scores (build it with --severity FILE)"
    title = "covidnet severity evaluation"

    def __init__(self):
        self.outputs = list(SCORES)

    @classmethod
    def from_config(cls, cfg) -> SeverityTask:
        return cls()

    def rows(self, store, split):
        rows = store.rows(split)
        y = self.targets(store, rows)
        return rows[~np.isnan(y).any(1)]

    def targets(self, store, rows):
        return np.stack([store.column(s, rows) for s in SCORES], axis=1).astype(np.float32)

    def loss(self, out, y):
        import torch.nn.functional as F

        return F.binary_cross_entropy_with_logits(out.float(), y / self.scale)

    def agreement(self, out, y):
        import torch

        return (torch.sigmoid(out.float()) * self.scale - y).abs().mean(1).sum()

    def decode(self, out) -> np.ndarray:
        """Network outputs -> scores on the 0-8 scale, (N, 2)."""
        return (1.0 / (1.0 + np.exp(-np.asarray(out, dtype=np.float64))) * self.scale).astype(np.float32)

    def meta(self):
        return {
            "task": self.name,
            "scores": list(SCORES),
            "score_range": [0.0, self.scale],
            "head": "8 * sigmoid(z), fractional-logit (BCE) loss on score / 8",
        }

    def validation(self, y, out):
        from ..metrics.regression import severity_point_metrics

        loss = float(self.loss(as_tensor(out), as_tensor(y))) if len(y) else float("nan")
        return {"loss": loss, **severity_point_metrics(y, self.decode(out))}

    def evaluate(self, y, out, patients, sources, meta, resamples, seed, sites=None, views=None):
        from ..metrics.regression import severity_metrics

        pred = self.decode(out)
        metrics = severity_metrics(y, pred, patients, resamples, seed)
        metrics["predictions"] = [{"true": t.tolist(), "pred": q.tolist()} for t, q in zip(y, pred)]
        return metrics

    def results(self, out, meta, rule):
        return [
            {"task": "severity", "scores": {s: float(v) for s, v in zip(SCORES, row)}, "scale": [0.0, self.scale]}
            for row in self.decode(out)
        ]

    def cam_outputs(self, result):
        return list(enumerate(SCORES))

    def figures(self, metrics, y, out):
        from ..report import plot_severity_scatter

        return [
            (
                "severity_scatter.png",
                plot_severity_scatter(y, self.decode(out), self.outputs),
                "Predicted against annotated score, one point per image; the diagonal is perfect agreement.",
            )
        ]

    def final(self, row):
        return f"val R² geographic / opacity {row['val_geographic_r2']:.3f} / {row['val_opacity_r2']:.3f}"

    @staticmethod
    def line(result):
        top, s = result["scale"][1], result["scores"]
        return f"geographic extent {s['geographic']:.1f}/{top:g}  opacity extent {s['opacity']:.1f}/{top:g}"

    def summary(self, metrics):
        from ..metrics.regression import SEVERITY_METRICS

        rows = [[f"{s} extent", *(format_ci(metrics[s][m]) for m in SEVERITY_METRICS)] for s in SCORES]
        return ["score (0-8)", "MAE", "RMSE", "R²", "Spearman"], rows

    def disagreements(self, y, out, meta, k):
        pred = self.decode(out)
        worst = np.argsort(-np.abs(pred - y).sum(1))[:k]  # the largest disagreements, with where the head looked
        return [
            {
                "index": int(i),
                "output": 0,
                "true": f"G {y[i, 0]:.1f} O {y[i, 1]:.1f}",
                "pred": f"G {pred[i, 0]:.1f} O {pred[i, 1]:.1f}",
                "confidence": None,
            }
            for i in worst
        ]
