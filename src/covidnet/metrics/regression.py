"""Severity scores (COVIDNet-S: geographic and opacity extent, 0-8): per score the mean absolute
error, root mean squared error, R² (scikit-learn) and Spearman's rank correlation (SciPy), each with a
95 % interval from the patient bootstrap."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from ..data.severity import SCORES
from .bootstrap import bootstrap_info, patient_bootstrap

SEVERITY_METRICS = ("mae", "rmse", "r2", "spearman")


def severity_point_metrics(y: np.ndarray, pred: np.ndarray, scores: Sequence[str] = SCORES) -> dict[str, float]:
    """``{"geographic.mae": …, "opacity.spearman": …}`` for annotated ``y`` and predicted ``pred``,
    both (N, len(scores)). NaN where undefined (fewer than 2 images, constant truth)."""
    from scipy.stats import spearmanr
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    out = {}
    for k, s in enumerate(scores):
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


def severity_metrics(
    y: np.ndarray, pred: np.ndarray, patients, resamples: int = 1000, seed: int = 0, scores: Sequence[str] = SCORES
) -> dict:
    """The severity evaluation JSON: ``{"n", "n_patients", "geographic": {"mae": {"value", "ci95"}, …},
    "opacity": {…}, "bootstrap"}``."""
    cis = patient_bootstrap(lambda idx: severity_point_metrics(y[idx], pred[idx], scores), patients, resamples, seed)
    return {
        "n": int(len(y)),
        "n_patients": int(len(set(patients))),
        **{s: {m: cis[f"{s}.{m}"] for m in SEVERITY_METRICS} for s in scores},
        "bootstrap": bootstrap_info(resamples, seed),
    }
