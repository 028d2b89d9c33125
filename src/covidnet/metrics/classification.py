"""Classification metrics: per class (one-vs-rest) sensitivity, PPV, **NPV**, specificity, F1 and
ROC-AUC, their macro averages, accuracy and the confusion matrix, each with a 95 % interval from the
patient bootstrap; per source; and what training logs after each epoch.

NPV, the share of images called negative for a class that truly are: users of the reference ask for
it and compute it from the wrong margin. From the one-vs-rest confusion matrix of class c,
NPV = TN / (TN + FN), where FN are images of class c predicted as another class.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .bootstrap import bootstrap_info, patient_bootstrap
from .calibration import expected_calibration_error

METRICS = ("sensitivity", "ppv", "npv", "specificity", "f1", "auc")


def training_metrics(y: np.ndarray, logits, classes: Sequence[str]) -> dict:
    """Point metrics as training logs them: loss, accuracy, per-class sensitivity (recall) and PPV
    (precision), the confusion matrix (rows: truth). ``logits``: a torch tensor (N, K)."""
    import torch
    import torch.nn.functional as F
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_score, recall_score

    labels = list(range(len(classes)))
    pred = logits.argmax(1).numpy()
    sens = recall_score(y, pred, labels=labels, average=None, zero_division=np.nan)
    ppv = precision_score(y, pred, labels=labels, average=None, zero_division=np.nan)
    return {
        "n": int(len(y)),
        "loss": float(F.cross_entropy(logits, torch.as_tensor(y))) if len(y) else float("nan"),
        "accuracy": float(accuracy_score(y, pred)) if len(y) else float("nan"),
        "sensitivity": {c: float(v) for c, v in zip(classes, sens)},
        "ppv": {c: float(v) for c, v in zip(classes, ppv)},
        "confusion": {"labels": list(classes), "matrix": confusion_matrix(y, pred, labels=labels).tolist()},
    }


def point_metrics(y: np.ndarray, probs: np.ndarray, classes: Sequence[str]) -> dict:
    """Accuracy; per class sensitivity, PPV, NPV, specificity, F1 and one-vs-rest ROC-AUC; macro
    averages (over the classes where a value exists). NaN where a metric is undefined (e.g. no positives)."""
    from sklearn.metrics import confusion_matrix, f1_score, precision_score, recall_score, roc_auc_score

    k = len(classes)
    labels = list(range(k))
    pred = probs.argmax(1)
    cm = confusion_matrix(y, pred, labels=labels)
    sens = recall_score(y, pred, labels=labels, average=None, zero_division=np.nan)
    ppv = precision_score(y, pred, labels=labels, average=None, zero_division=np.nan)
    f1 = f1_score(y, pred, labels=labels, average=None, zero_division=np.nan)
    tp = np.diag(cm)
    fp, fn = cm.sum(0) - tp, cm.sum(1) - tp
    tn = cm.sum() - tp - fp - fn
    with np.errstate(invalid="ignore", divide="ignore"):
        spec = tn / (tn + fp)
        npv = tn / (tn + fn)
    auc = np.full(k, np.nan)
    for c in labels:
        positives = y == c
        if 0 < positives.sum() < len(y):
            auc[c] = roc_auc_score(positives, probs[:, c])
    per_class = {
        name: {"sensitivity": sens[c], "ppv": ppv[c], "npv": npv[c], "specificity": spec[c], "f1": f1[c], "auc": auc[c]}
        for c, name in enumerate(classes)
    }
    macro = {}
    for m in METRICS:
        vals = [per_class[c][m] for c in classes if not np.isnan(per_class[c][m])]
        macro[m] = float(np.mean(vals)) if vals else float("nan")
    return {
        "accuracy": float((pred == y).mean()) if len(y) else float("nan"),
        "macro": macro,
        "per_class": {c: {m: float(v) for m, v in d.items()} for c, d in per_class.items()},
        "confusion_matrix": {"labels": list(classes), "matrix": cm.tolist()},
    }


def flatten(point: dict, classes: Sequence[str]) -> dict[str, float]:
    """``point_metrics`` as one flat dict (``accuracy``, ``macro.auc``, ``COVID-19.npv``…) for the bootstrap."""
    flat = {"accuracy": point["accuracy"], **{f"macro.{m}": v for m, v in point["macro"].items()}}
    for c in classes:
        flat.update({f"{c}.{m}": v for m, v in point["per_class"][c].items()})
    return flat


def metrics_with_ci(
    y: np.ndarray, probs: np.ndarray, classes: Sequence[str], patients, resamples: int, seed: int
) -> dict:
    """Every metric of ``point_metrics`` as ``{"value", "ci95"}`` (patient bootstrap); ECE; counts."""
    point = point_metrics(y, probs, classes)
    cis = patient_bootstrap(
        lambda idx: flatten(point_metrics(y[idx], probs[idx], classes), classes), patients, resamples, seed
    )
    return {
        "n": int(len(y)),
        "n_patients": int(len(np.unique(patients))),
        "accuracy": cis["accuracy"],
        "macro": {m: cis[f"macro.{m}"] for m in METRICS},
        "per_class": {c: {m: cis[f"{c}.{m}"] for m in METRICS} for c in classes},
        "confusion_matrix": point["confusion_matrix"],
        "ece": expected_calibration_error(y, probs),
        "bootstrap": bootstrap_info(resamples, seed),
    }


def compute_metrics(
    y: np.ndarray,
    probs: np.ndarray,
    classes: Sequence[str],
    patients: Sequence[str] | None = None,
    sources: Sequence[str] | None = None,
    resamples: int = 1000,
    seed: int = 0,
) -> dict:
    """The classification evaluation JSON: every metric with a 95 % CI from a bootstrap over patients;
    ECE; the same per source (when there are several)."""
    y = np.asarray(y)
    patients = np.asarray(patients if patients is not None else [str(i) for i in range(len(y))])
    out = metrics_with_ci(y, probs, classes, patients, resamples, seed)
    out["per_source"] = {}
    if sources is not None and len(set(sources)) > 1:
        sources = np.asarray(sources)
        out["per_source"] = {
            s: metrics_with_ci(y[sources == s], probs[sources == s], classes, patients[sources == s], resamples, seed)
            for s in sorted(set(sources))
        }
    return out
