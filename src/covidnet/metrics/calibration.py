"""Calibration: reliability bins and the expected calibration error (Guo et al. 2017), temperature
scaling fitted on validation data, and the operating point (a threshold on P(positive class)) that
meets a sensitivity or specificity target on validation data. Never on test data."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..data.records import positive_class
from ..errors import ConfigError


def reliability_bins(y_true: np.ndarray, probs: np.ndarray, n_bins: int = 10):
    """Top-class confidence in ``n_bins`` equal-width bins, (lo, hi] (the first also takes 0):
    per-bin count, accuracy, mean confidence (NaN for empty bins), and the ECE."""
    conf = probs.max(1) if len(probs) else np.zeros(0)
    correct = (probs.argmax(1) == y_true) if len(probs) else np.zeros(0, bool)
    idx = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.bincount(idx, weights=correct.astype(float), minlength=n_bins) / count
        mean_conf = np.bincount(idx, weights=conf, minlength=n_bins) / count
    ece = float(np.nansum(np.abs(acc - mean_conf) * count) / count.sum()) if count.sum() else float("nan")
    return count, acc, mean_conf, ece


def expected_calibration_error(y: np.ndarray, probs: np.ndarray, bins: int = 10) -> float:
    """ECE of the top-class confidence over ``bins`` equal-width bins (Guo et al. 2017)."""
    return reliability_bins(np.asarray(y), np.asarray(probs), bins)[3]


def fit_temperature(logits, y: np.ndarray) -> float:
    """The temperature T minimising the negative log-likelihood of softmax(logits / T) (Guo et al.
    2017), fitted by LBFGS on log T; validation data, never test data. ``logits``: a torch tensor."""
    import torch
    import torch.nn.functional as F

    if len(y) == 0:
        raise ConfigError("cannot fit a temperature on an empty validation split")
    log_t = torch.zeros(1, requires_grad=True)
    target = torch.as_tensor(y)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), target)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp())


def choose_operating_point(y: np.ndarray, probs: np.ndarray, classes: Sequence[str], spec: str) -> dict:
    """The threshold on P(positive class) that meets ``spec`` ('sensitivity=0.95' or 'specificity=0.9')
    on these (validation) data: the highest threshold reaching the sensitivity, or the lowest reaching
    the specificity."""
    try:
        kind, value = spec.split("=")
        target = float(value)
    except ValueError:
        kind, target = "", -1.0
    if kind not in ("sensitivity", "specificity") or not 0 < target <= 1:
        raise ConfigError(f"--operating-point {spec!r}: write sensitivity=0.95 or specificity=0.9")
    c = list(classes).index(positive_class(classes))
    p, pos = probs[:, c], y == c
    if not pos.any() or pos.all():
        raise ConfigError("the validation split needs positive and negative images to choose an operating point")
    candidates = np.unique(np.concatenate([p, [0.0]]))
    for t in candidates[::-1] if kind == "sensitivity" else candidates:
        sens = float((p[pos] >= t).mean())
        spec_ = float((p[~pos] < t).mean())
        if (kind == "sensitivity" and sens >= target) or (kind == "specificity" and spec_ >= target):
            return {
                "class": classes[c],
                "threshold": float(t),
                "target": spec,
                "sensitivity": sens,
                "specificity": spec_,
                "n_val": int(len(y)),
            }
    return None
