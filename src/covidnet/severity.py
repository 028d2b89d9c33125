"""Evaluation and prediction for the severity (COVIDNet-S) and risk (COVID-RiskNet) heads.

Severity: per score (geographic extent, opacity extent; 0-8), the mean absolute error, root mean
squared error, R² (scikit-learn) and Spearman's rank correlation (scipy), each with a 95 % interval
from a bootstrap over **patients**; a predicted-versus-annotated scatter plot in the report; Grad-CAM
of each score's output. Risk: accuracy, macro F1 (scikit-learn; over the bins present in truth or
prediction) and the mean absolute bin error (how many bins off, on average), with the same
intervals, and the confusion matrix. The checkpoint says which task it was trained for (``task``) and
what it needs (score names and scale, bin edges), so no flag restates them.

Research tool: a severity score or a risk bin from here is not a clinical assessment.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from .data.severity import SCORES
from .errors import ConfigError, CovidnetError
from .evaluate import _device, _memory_format, patient_bootstrap, predict_logits
from .tasks import RiskTask, SeverityTask, Task, task_from_meta
from .tensors import image_input

SEVERITY_METRICS = ("mae", "rmse", "r2", "spearman")
RISK_METRICS = ("accuracy", "macro_f1", "mean_abs_bin_error")


# --- metrics ----------------------------------------------------------------------------------------


def severity_point_metrics(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """``{"geographic.mae": …, "opacity.spearman": …}`` for annotated ``y`` and predicted ``pred``,
    both (N, 2) on the 0-8 scale. NaN where undefined (fewer than 2 images, constant truth)."""
    from scipy.stats import spearmanr
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    out = {}
    for k, s in enumerate(SCORES):
        t, p = y[:, k], pred[:, k]
        if len(t) < 2:
            out.update({f"{s}.{m}": float("nan") for m in SEVERITY_METRICS})
            continue
        out[f"{s}.mae"] = float(mean_absolute_error(t, p))
        out[f"{s}.rmse"] = float(np.sqrt(mean_squared_error(t, p)))
        out[f"{s}.r2"] = float(r2_score(t, p, force_finite=False))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scipy warns (and returns NaN) on constant input
            out[f"{s}.spearman"] = float(spearmanr(t, p).statistic)
    return out


def risk_point_metrics(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Accuracy, macro F1 and mean absolute bin error of predicted bins ``pred`` against ``y``."""
    from sklearn.metrics import accuracy_score, f1_score

    if len(y) == 0:
        return {m: float("nan") for m in RISK_METRICS}
    return {"accuracy": float(accuracy_score(y, pred)),
            "macro_f1": float(f1_score(y, pred, average="macro", zero_division=0)),
            "mean_abs_bin_error": float(np.abs(np.asarray(pred) - np.asarray(y)).mean())}


def severity_metrics(y: np.ndarray, pred: np.ndarray, patients, resamples: int = 1000, seed: int = 0) -> dict:
    """The severity evaluation JSON: ``{"n", "n_patients", "geographic": {"mae": {"value", "ci95"}, …},
    "opacity": {…}, "bootstrap"}``."""
    cis = patient_bootstrap(lambda idx: severity_point_metrics(y[idx], pred[idx]), patients, resamples, seed)
    return {"n": int(len(y)), "n_patients": int(len(set(patients))),
            **{s: {m: cis[f"{s}.{m}"] for m in SEVERITY_METRICS} for s in SCORES},
            "bootstrap": {"resamples": resamples, "unit": "patient", "seed": seed}}


def risk_metrics(y: np.ndarray, pred: np.ndarray, classes: list[str], patients, resamples: int = 1000,
                 seed: int = 0) -> dict:
    """The risk evaluation JSON: accuracy, macro F1 and mean absolute bin error, each ``{"value",
    "ci95"}``, and the confusion matrix over the bins."""
    from sklearn.metrics import confusion_matrix

    cis = patient_bootstrap(lambda idx: risk_point_metrics(y[idx], pred[idx]), patients, resamples, seed)
    cm = confusion_matrix(y, pred, labels=list(range(len(classes))))
    return {"n": int(len(y)), "n_patients": int(len(set(patients))), **cis,
            "confusion_matrix": {"labels": list(classes), "matrix": cm.tolist()},
            "bootstrap": {"resamples": resamples, "unit": "patient", "seed": seed}}


def validation_metrics(task: Task, y: np.ndarray, out: torch.Tensor) -> dict:
    """What training logs after each epoch for a severity or risk head: the loss and point metrics."""
    loss = float(task.loss(out, torch.as_tensor(y))) if len(y) else float("nan")
    if isinstance(task, SeverityTask):
        return {"loss": loss, **severity_point_metrics(y, task.decode(out))}
    return {"loss": loss, **risk_point_metrics(y, task.decode(out))}


# --- evaluating a checkpoint ------------------------------------------------------------------------


def evaluate_task_checkpoint(checkpoint: str, data: str, split: str = "test", resamples: int = 1000, seed: int = 0,
                             device: str = "auto", report: str | None = None, cam_method: str = "gradcam") -> dict:
    """Evaluate a severity or risk ``checkpoint`` on the images of ``split`` of the built dataset
    ``data`` that have the task's targets (severity scores; COVID-19 with days since onset). Writes
    an HTML report to ``report`` when given. Returns the metrics JSON."""
    from . import __version__
    from .checkpoint import load_model
    from .data.store import open_store

    dev = _device(device)
    model, meta = load_model(checkpoint, dev, tasks=("severity", "risk"))
    task = task_from_meta(meta)
    store = open_store(data)
    pre = meta["preprocess"]
    if store.size != pre["stored_size"]:
        raise ConfigError(f"{data}: stored at {store.size} px, but the checkpoint was trained on a store of {pre['stored_size']} px")
    rows = task.rows(store, split)
    if len(rows) == 0:
        need = "severity scores (build it with --severity FILE)" if task.name == "severity" else "COVID-19 images with an offset"
        raise ConfigError(f"{data}: no images with {need} in split {split!r}")
    out = predict_logits(model, lambda pos: torch.from_numpy(np.ascontiguousarray(store.images[rows[pos]])),
                         np.arange(len(rows)), meta["train_config"].get("eval_batch_size", 64), pre, dev, _memory_format(meta))
    y = task.targets(store, rows)
    patients = [f"{store.index[r]['source']}:{store.index[r]['patient_id']}" for r in rows]
    pred = task.decode(out)
    if isinstance(task, SeverityTask):
        metrics = severity_metrics(y, pred, patients, resamples, seed)
    else:
        metrics = risk_metrics(y, pred, task.classes, patients, resamples, seed)
    metrics.update({"task": task.name, "checkpoint": str(checkpoint), "arch": meta["arch"], "data": str(data),
                    "split": split, "version": __version__})
    names = [store.index[r]["filename"] for r in rows]
    metrics["predictions"] = [{"name": n, "patient": p, "true": t.tolist(), "pred": q.tolist()}
                              for n, p, t, q in zip(names, patients, y, pred)]
    if report:
        _write_report(report, task, metrics, y, pred, model, pre, dev, cam_method,
                      [np.asarray(store.images[r]) for r in rows], names)
    return metrics


def _write_report(out_dir, task: Task, metrics: dict, y, pred, model, pre, dev, cam_method, images, names) -> None:
    from .report import plot_confusion, plot_severity_scatter, write_task_report

    context = {k: str(metrics[k]) for k in ("task", "checkpoint", "arch", "data", "split", "version")}
    if isinstance(task, SeverityTask):
        rows = [[f"{s} extent", *(_ci(metrics[s][m]) for m in SEVERITY_METRICS)] for s in SCORES]
        table = (["score (0-8)", "MAE", "RMSE", "R²", "Spearman"], rows)
        figures = [("severity_scatter.png", plot_severity_scatter(y, pred, SCORES),
                    "Predicted against annotated score, one point per image; the diagonal is perfect agreement.")]
        worst = np.argsort(-np.abs(pred - y).sum(1))[:8]  # the largest disagreements, with where the head looked
        shown = []
        if len(worst):
            from .explain import CamExplainer, overlay

            explainer = CamExplainer(model, method=cam_method)
            for i in worst:
                heat = explainer(image_input(images[i], pre, dev), 0)[0]
                shown.append({"name": names[i], "true": f"G {y[i, 0]:.1f} O {y[i, 1]:.1f}",
                              "pred": f"G {pred[i, 0]:.1f} O {pred[i, 1]:.1f}", "image": images[i], "overlay": overlay(images[i], heat)})
        write_task_report(out_dir, "covidnet severity evaluation", table, figures, context, errors=shown)
    else:
        table = (["", "value (95 % CI)"], [["accuracy", _ci(metrics["accuracy"])], ["macro F1", _ci(metrics["macro_f1"])],
                                            ["mean absolute bin error", _ci(metrics["mean_abs_bin_error"])]])
        cm = metrics["confusion_matrix"]
        figures = [("confusion_matrix.png", plot_confusion(cm["labels"], np.array(cm["matrix"])),
                    "Rows: true bin of days since onset; columns: predicted bin.")]
        write_task_report(out_dir, "covidnet risk (days since onset) evaluation", table, figures, context)


def _ci(entry: dict) -> str:
    v, ci = entry["value"], entry["ci95"]
    if v is None or v != v:
        return "—"
    return f"{v:.3f}" + (f" ({ci[0]:.3f}–{ci[1]:.3f})" if ci else "")


# --- prediction -------------------------------------------------------------------------------------


def _read_batches(inputs: Iterable[str], pre: dict, batch_size: int) -> Iterator[list[tuple[Path, np.ndarray | None, str | None]]]:
    """Batches of (path, stored-size uint8 image or None, error or None), through the one preprocessing
    path; a file that is missing, unreadable or a lateral view carries its error instead."""
    from .predict import iter_inputs, load_input

    batch = []
    for path, error in iter_inputs(inputs):
        img = None
        if not error:
            try:
                img = load_input(path, pre)  # predict's: the frontal-view check, then the one preprocessing path
            except CovidnetError as e:
                error = str(e)
        batch.append((path, img, error))
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def predict_task_paths(checkpoint: str, inputs: Iterable[str], batch_size: int = 16, device: str = "auto",
                       cam_dir: str | None = None, cam_method: str = "gradcam") -> Iterator[dict]:
    """One result per input image, in order. Severity: ``{"path", "status": "ok", "task": "severity",
    "scores": {"geographic": g, "opacity": o}, "scale": [0, 8], "cam": {score: png}}``; risk: ``{…,
    "task": "risk", "bin", "bin_index", "probabilities": {bin: p}, "cam": png}``; a failure: ``{"path",
    "status": "failed", "error"}``. With ``cam_dir``, Grad-CAM overlays of the head's outputs (severity:
    one per score; risk: the output of the last bin edge the image is predicted beyond)."""
    from .checkpoint import load_model
    from .explain import CamExplainer, save_overlay

    dev = _device(device)
    model, meta = load_model(checkpoint, dev, tasks=("severity", "risk"))
    task = task_from_meta(meta)
    pre = meta["preprocess"]
    explainer = None
    if cam_dir:
        Path(cam_dir).mkdir(parents=True, exist_ok=True)
        explainer = CamExplainer(model, method=cam_method)
    used: set[str] = set()

    def cam(path: Path, img: np.ndarray, output: int, tag: str) -> str:
        name, n = f"{path.stem}.{tag}.cam.png", 1
        while name in used:
            n += 1
            name = f"{path.stem}-{n}.{tag}.cam.png"
        used.add(name)
        heat = explainer(image_input(img, pre, dev), output)[0]
        return str(save_overlay(Path(cam_dir) / name, img, heat))

    for batch in _read_batches(inputs, pre, batch_size):
        ok = [(p, img) for p, img, err in batch if err is None]
        out = torch.zeros(0, len(task.outputs))
        if ok:
            stack = np.stack([img for _, img in ok])
            out = predict_logits(model, lambda pos: torch.from_numpy(stack[pos]), np.arange(len(stack)), batch_size,
                                 pre, dev, _memory_format(meta))
        k = 0
        for path, img, err in batch:
            if err is not None:
                yield {"path": str(path), "status": "failed", "error": err}
                continue
            o = out[k:k + 1]
            k += 1
            if isinstance(task, SeverityTask):
                scores = task.decode(o)[0]
                r = {"path": str(path), "status": "ok", "task": "severity",
                     "scores": {s: float(v) for s, v in zip(SCORES, scores)}, "scale": [0.0, task.scale]}
                if explainer is not None:
                    r["cam"] = {s: cam(path, img, j, s) for j, s in enumerate(SCORES)}
            else:
                assert isinstance(task, RiskTask)
                b = int(task.decode(o)[0])
                r = {"path": str(path), "status": "ok", "task": "risk", "bin": task.classes[b], "bin_index": b,
                     "probabilities": {c: float(p) for c, p in zip(task.classes, task.probabilities(o)[0])}}
                if explainer is not None:
                    r["cam"] = cam(path, img, max(b - 1, 0), "risk")
            yield r
