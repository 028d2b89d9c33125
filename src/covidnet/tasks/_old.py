"""What a network is trained to output, as training, evaluation and prediction see it: a *task*. All
that differs between tasks lives here, and nowhere else: which rows of a dataset it can use, its
targets and loss, what training logs, its evaluation metrics, its per-image result, which outputs get
a heat map, and what its checkpoint carries.

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

The decision rule of classification (softmax with the fitted temperature, the triage threshold) is
here too. This module imports no torch at import time: ``covidnet predict --onnx`` runs without it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .data.records import BINARY_CLASSES, CLASSES, positive_class
from .data.severity import SCORE_MAX, SCORES
from .errors import ConfigError, UsageError
from .metrics.bootstrap import format_ci

TASKS = ("classification", "severity", "risk")
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


def _torch(out):
    import torch

    return out if isinstance(out, torch.Tensor) else torch.as_tensor(np.asarray(out, dtype=np.float32))


# --- the decision rule of classification --------------------------------------------------------------


def softmax(logits, temperature: float | None = None) -> np.ndarray:
    """Class probabilities (N, K) float32 from logits (N, K), after temperature scaling when fitted.
    Every path that turns logits into probabilities (eval, calibrate, predict, serve) calls this."""
    z = np.asarray(logits, dtype=np.float64) / (temperature or 1.0)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def triage_rule(meta: dict, threshold: str | None, operating_point: str | None = None) -> dict | None:
    """``--threshold CLASS=P`` if given; else the operating point stored in the checkpoint (which must be
    the one ``--operating-point`` names, when given); else None."""
    classes = meta["classes"]
    if threshold and operating_point:
        raise ConfigError("give --threshold or --operating-point, not both")
    stored = meta.get("operating_point")
    if operating_point and (not stored or stored["target"] != operating_point):
        have = f"it has {stored['target']}" if stored else "it has none"
        raise ConfigError(
            f"the checkpoint has no operating point {operating_point} ({have}); choose it on validation "
            f"data first: covidnet calibrate --checkpoint CKPT --data DIR --operating-point {operating_point}"
        )
    if threshold:
        name, _, value = threshold.rpartition("=")
        try:
            t = float(value)
        except ValueError:
            t = -1.0
        if name not in classes or not 0 <= t <= 1:
            raise ConfigError(
                f"--threshold {threshold!r}: write CLASS=P with CLASS one of {', '.join(classes)} and 0 <= P <= 1"
            )
        return {"class": name, "threshold": t, "rule": f"--threshold {threshold}"}
    if stored:
        return {
            "class": stored["class"],
            "threshold": stored["threshold"],
            "rule": f"operating point {stored['target']} (validation)",
        }
    return None


def decide(probs: np.ndarray, classes: list[str], rule: dict | None) -> dict:
    """One image's result from its probabilities: label, every class's probability, triage."""
    out = {"label": classes[int(np.argmax(probs))], "probabilities": {c: float(v) for c, v in zip(classes, probs)}}
    if rule:
        pc = float(probs[classes.index(rule["class"])])
        out["triage"] = {**rule, "probability": pc, "flag": pc >= rule["threshold"]}
    return out


# --- the tasks ------------------------------------------------------------------------------------------


class Task:
    name = "classification"
    outputs: list[str]  # one name per network output
    agreement_name = "acc"  # what ``agreement`` sums, as the training log names it
    needs = "images"  # what it needs from a dataset, as an error message says it
    title = "covidnet evaluation"

    def rows(self, store, split: str) -> np.ndarray:
        return store.rows(split)

    def targets(self, store, rows: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def loss(self, out, y):
        raise NotImplementedError

    def agreement(self, out, y):
        """Summed over the batch on the device (no synchronisation): correct predictions, or absolute errors."""
        raise NotImplementedError

    def meta(self) -> dict:
        """What the checkpoint carries for this task."""
        return {"task": self.name}

    def validation(self, y: np.ndarray, out) -> dict:
        """What training logs after each epoch: the loss and point metrics."""
        raise NotImplementedError

    def log(self, val: dict) -> tuple[dict, str]:
        """The validation figures as log columns, and as the per-epoch line shows them."""
        row = {f"val_{k.replace('.', '_')}": v for k, v in val.items() if k != "loss"}
        shown = " ".join(
            f"{k} {v:.3f}"
            for k, v in val.items()
            if k != "loss" and k.split(".")[-1] in ("r2", "spearman", "accuracy", "macro_f1")
        )
        return row, shown

    def evaluate(
        self, y: np.ndarray, out: np.ndarray, patients, sources, meta: dict, resamples: int, seed: int
    ) -> dict:
        """The evaluation JSON of outputs ``out`` (N, K) against targets ``y``."""
        raise NotImplementedError

    def results(self, out: np.ndarray, meta: dict, rule: dict | None) -> list[dict]:
        """One prediction result (the task's fields) per row of ``out``."""
        raise NotImplementedError

    def cam_outputs(self, result: dict) -> list[tuple[int, str | None]]:
        """The outputs a heat map explains for one result, each with the tag its file name carries
        (None: no tag)."""
        raise NotImplementedError

    def summary(self, metrics: dict) -> tuple[list[str], list[list[str]]]:
        """The report's and the terminal's summary table: (header, rows)."""
        raise NotImplementedError

    def disagreements(self, y: np.ndarray, out: np.ndarray, meta: dict, k: int) -> list[dict]:
        """The ``k`` images the report shows with their heat map: ``{"index", "output", "true", "pred",
        "confidence"}``, worst first."""
        return []

    def headline(self, metrics: dict) -> str | None:
        """A line above the summary table, where the task has one."""
        return None

    @staticmethod
    def line(result: dict) -> str:
        """One prediction result as the terminal shows it (after the path)."""
        raise NotImplementedError

    reads_label_files = False  # ``eval --labels``: raw images named in a COVIDx label file (class labels)

    def decision_rule(self, meta: dict, threshold: str | None, operating_point: str | None) -> dict | None:
        """The rule that flags an image (classification's triage); other tasks take none."""
        if threshold or operating_point:
            raise UsageError(
                f"--threshold and --operating-point are for classification checkpoints, not a {self.name} checkpoint"
            )
        return None

    def rebalance(self, covid_percent: float) -> tuple[int | None, float]:
        """(class, share of every training batch drawn from it): COVID-19 rebalancing, for classification."""
        return None, 0.0

    def batch_mix(self, y_seen: np.ndarray) -> tuple[dict, str]:
        """The class mix of the images an epoch saw, as log columns and text (classification only)."""
        return {}, ""

    def final(self, row: dict) -> str:
        """The last epoch's figure ``covidnet train`` ends with."""
        return " / ".join(f"{k} {v:.3f}" for k, v in row.items() if k.endswith(("_r2", "val_accuracy")))

    def write_report(self, out_dir, metrics: dict, y, out, meta: dict, shown, context: dict):
        """The HTML report of an evaluation (``covidnet.report``)."""
        from .report import write_task_report

        return write_task_report(
            out_dir, self.title, self.summary(metrics), self.figures(metrics, y, out), context, errors=shown
        )

    def figures(self, metrics: dict, y, out) -> list:
        """The report's figures: ``(file name, matplotlib Figure, caption)``."""
        return []


class ClassificationTask(Task):
    def __init__(self, classes: Sequence[str], weights=None):
        self.outputs = list(classes)
        self.weights = weights

    def targets(self, store, rows):
        return store.labels(rows, binary=tuple(self.outputs) == BINARY_CLASSES)

    def loss(self, out, y):
        import torch.nn.functional as F

        return F.cross_entropy(out, y, weight=None if self.weights is None else self.weights.to(out.device))

    def agreement(self, out, y):
        return (out.argmax(1) == y).sum()

    def meta(self):
        return {"task": self.name, "classes": list(self.outputs)}

    @property
    def positive(self) -> int:
        return self.outputs.index(positive_class(self.outputs))

    reads_label_files = True

    def decision_rule(self, meta, threshold, operating_point):
        return triage_rule(meta, threshold, operating_point)

    def rebalance(self, covid_percent):
        return self.positive, covid_percent

    def batch_mix(self, y_seen):
        mix = np.bincount(y_seen, minlength=len(self.outputs)) / max(len(y_seen), 1)
        text = " | class mix " + " ".join(f"{c} {m:.0%}" for c, m in zip(self.outputs, mix))
        return {f"mix_{c}": float(m) for c, m in zip(self.outputs, mix)}, text

    def final(self, row):
        return f"val accuracy {row['val_acc']:.3f}"

    def write_report(self, out_dir, metrics, y, out, meta, shown, context):
        from .report import write_report

        return write_report(
            out_dir, metrics, y, self.probabilities(out, meta), self.outputs, errors=shown, context=context
        )

    def validation(self, y, out):
        from .metrics.classification import training_metrics

        return training_metrics(y, _torch(out), self.outputs)

    def log(self, val):
        row = {
            "val_acc": val["accuracy"],
            **{f"val_sens_{c}": val["sensitivity"][c] for c in self.outputs},
            **{f"val_ppv_{c}": val["ppv"][c] for c in self.outputs},
        }
        return row, f"acc {val['accuracy']:.3f}"

    def probabilities(self, out: np.ndarray, meta: dict) -> np.ndarray:
        return softmax(out, meta.get("temperature"))

    def evaluate(self, y, out, patients, sources, meta, resamples, seed):
        from .metrics.classification import compute_metrics

        probs = self.probabilities(out, meta)
        metrics = compute_metrics(y, probs, self.outputs, patients, sources, resamples, seed)
        return {**metrics, "temperature": meta.get("temperature"), "classes": list(self.outputs)}

    def results(self, out, meta, rule):
        return [{"task": self.name, **decide(p, self.outputs, rule)} for p in self.probabilities(out, meta)]

    def cam_outputs(self, result):
        return [(self.outputs.index(result["label"]), None)]

    def headline(self, metrics):
        t = metrics.get("temperature")
        return f"accuracy {format_ci(metrics['accuracy'])}   ECE {metrics['ece']:.3f}" + (
            f"   temperature {t:.3f}" if t else ""
        )

    @staticmethod
    def line(result):
        probs = " ".join(f"{c} {p:.3f}" for c, p in result["probabilities"].items())
        tri = ""
        if "triage" in result:
            t = result["triage"]
            tri = (
                f"  triage: {'FLAG' if t['flag'] else 'no flag'} ({t['class']} {t['probability']:.3f} "
                f"vs {t['threshold']:.3f})"
            )
        return f"{result['label']}  [{probs}]{tri}"

    def summary(self, metrics):
        from .metrics.classification import METRICS

        rows = [[c, *(format_ci(metrics["per_class"][c][k]) for k in METRICS)] for c in self.outputs]
        rows.append(["macro", *(format_ci(metrics["macro"][k]) for k in METRICS)])
        return ["class", "sensitivity", "PPV", "NPV", "specificity", "F1", "AUC"], rows

    def disagreements(self, y, out, meta, k):
        probs = self.probabilities(out, meta)
        pred = probs.argmax(1)
        wrong = np.flatnonzero(pred != y)
        worst = wrong[np.argsort(-probs[wrong, pred[wrong]])][:k]
        return [
            {
                "index": int(i),
                "output": int(pred[i]),
                "true": self.outputs[y[i]],
                "pred": self.outputs[pred[i]],
                "confidence": float(probs[i, pred[i]]),
            }
            for i in worst
        ]


class SeverityTask(Task):
    name = "severity"
    scale = SCORE_MAX
    agreement_name = "mae"
    needs = "images with severity scores (build it with --severity FILE)"
    title = "covidnet severity evaluation"

    def __init__(self):
        self.outputs = list(SCORES)

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
        from .metrics.regression import severity_point_metrics

        loss = float(self.loss(_torch(out), _torch(y))) if len(y) else float("nan")
        return {"loss": loss, **severity_point_metrics(y, self.decode(out))}

    def evaluate(self, y, out, patients, sources, meta, resamples, seed):
        from .metrics.regression import severity_metrics

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
        from .report import plot_severity_scatter

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
        from .metrics.regression import SEVERITY_METRICS

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


class RiskTask(Task):
    name = "risk"
    needs = "COVID-19 images with days since onset (an offset)"
    title = "covidnet risk (days since onset) evaluation"

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
        from .metrics.ordinal import risk_point_metrics

        loss = float(self.loss(_torch(out), _torch(y))) if len(y) else float("nan")
        return {"loss": loss, **risk_point_metrics(y, self.decode(out))}

    def evaluate(self, y, out, patients, sources, meta, resamples, seed):
        from .metrics.ordinal import risk_metrics

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
        from .report import plot_confusion

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


def result_line(result: dict) -> str:
    """A prediction result (``predict_paths``) as one line of text, whatever its task."""
    kind = {"severity": SeverityTask, "risk": RiskTask}.get(result.get("task"), ClassificationTask)
    return kind.line(result)


def make_task(
    name: str, classes: Sequence[str] = CLASSES, risk_bins: str | Sequence[float] = DEFAULT_RISK_BINS
) -> Task:
    """The task ``name`` (``covidnet train --task``): its classes, or its risk bins (``"3,5,10"`` or edges)."""
    if name not in TASKS:
        raise ConfigError(f"--task must be one of {', '.join(TASKS)}, not {name!r}")
    if name == "severity":
        return SeverityTask()
    if name == "risk":
        return RiskTask(parse_bins(risk_bins) if isinstance(risk_bins, str) else risk_bins)
    return ClassificationTask(classes)


def task_from_meta(meta: dict) -> Task:
    """The task a checkpoint was trained for (classification when it does not say)."""
    if meta.get("task") == "lungs":
        raise ConfigError(
            "a lung segmentation checkpoint (covidnet lungs train): evaluate it with `covidnet lungs eval`, "
            "predict with `covidnet lungs predict`"
        )
    return make_task(meta.get("task", "classification"), meta.get("classes", CLASSES), meta.get("risk_bins", ()))
