"""Risk bins (COVID-RiskNet: ordered bins of days since onset): accuracy, macro F1 (scikit-learn; over
the bins present in truth or prediction) and the mean absolute bin error (how many bins off, on
average), each with a 95 % interval from the patient bootstrap, and the confusion matrix."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .bootstrap import bootstrap_info, patient_bootstrap

RISK_METRICS = ("accuracy", "macro_f1", "mean_abs_bin_error")


def risk_point_metrics(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Accuracy, macro F1 and mean absolute bin error of predicted bins ``pred`` against ``y``."""
    from sklearn.metrics import accuracy_score, f1_score

    if len(y) == 0:
        return {m: float("nan") for m in RISK_METRICS}
    return {
        "accuracy": float(accuracy_score(y, pred)),
        "macro_f1": float(f1_score(y, pred, average="macro", zero_division=0)),
        "mean_abs_bin_error": float(np.abs(np.asarray(pred) - np.asarray(y)).mean()),
    }


def risk_metrics(
    y: np.ndarray, pred: np.ndarray, classes: Sequence[str], patients, resamples: int = 1000, seed: int = 0
) -> dict:
    """The risk evaluation JSON: accuracy, macro F1 and mean absolute bin error, each ``{"value",
    "ci95"}``, and the confusion matrix over the bins."""
    from sklearn.metrics import confusion_matrix

    cis = patient_bootstrap(lambda idx: risk_point_metrics(y[idx], pred[idx]), patients, resamples, seed)
    cm = confusion_matrix(y, pred, labels=list(range(len(classes))))
    return {
        "n": int(len(y)),
        "n_patients": int(len(set(patients))),
        **cis,
        "confusion_matrix": {"labels": list(classes), "matrix": cm.tolist()},
        "bootstrap": bootstrap_info(resamples, seed),
    }
