"""Test 2, source predictability: a linear probe (logistic regression, cross-validated by patient) predicts the
source from the model's frozen features and from raw downsampled pixels (``thumbnails``), among images of
the same class; the mutual information between source and label is reported beside it."""

from __future__ import annotations

import math

import numpy as np
import torch

from .verdicts import EXCESS_FAIL, EXCESS_WARN, MI_WARN, threshold_verdict, worst_verdict


def probe(x: np.ndarray, target: np.ndarray, groups: np.ndarray, seed: int = 0) -> float:
    """Balanced accuracy of a cross-validated linear probe (folds by patient, so one patient's images
    never sit on both sides)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import GroupKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folds = min(5, len(np.unique(groups)))
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.1))
    pred = cross_val_predict(clf, x, target, groups=groups, cv=GroupKFold(n_splits=folds))
    return float(balanced_accuracy_score(target, pred))


def mutual_information(sources: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(MI in bits, MI / H(label)): how much of the label the source alone gives away."""
    from sklearn.metrics import mutual_info_score

    mi = mutual_info_score(sources, labels) / math.log(2)
    p = np.bincount(np.unique(labels, return_inverse=True)[1]) / len(labels)
    h = float(-(p * np.log2(p)).sum())
    return float(mi), float(mi / h) if h > 0 else float("nan")


def _probe_per_label(features, pixels, sources, labels, groups, classes, seed: int) -> dict:
    """The probes' balanced accuracies among the images of each label that comes from several sources."""
    per_label = {}
    for c in np.unique(labels):
        m = labels == c
        src, cnt = np.unique(sources[m], return_counts=True)
        name = classes[c]
        if len(src) < 2 or cnt.min() < 5 or len(np.unique(groups[m])) < 4:
            per_label[name] = {"skipped": f"{name} images come from {len(src)} source(s), smallest {cnt.min()} images"}
            continue
        per_label[name] = {
            "chance": 1 / len(src),
            "features": probe(features[m], sources[m], groups[m], seed),
            "pixels": probe(pixels[m], sources[m], groups[m], seed),
            "n": int(m.sum()),
        }
    return per_label


def source_predictability(
    features: np.ndarray,
    pixels: np.ndarray,
    sources: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray,
    classes,
    seed: int = 0,
) -> dict:
    """Probe the source *within each label*: when sources contribute different classes, the disease
    itself predicts the source, so only a source signal among images of the same class is a shortcut
    the model could use. The verdict takes the worst label; the mutual information between source and
    label (a property of the dataset, not of the model) can raise at most a warning."""
    uniq, counts = np.unique(sources, return_counts=True)
    base = {
        "test": "source predictability",
        "sources": {str(s): int(c) for s, c in zip(uniq, counts)},
        "thresholds": {
            "within_label_excess_warning": EXCESS_WARN,
            "within_label_excess_fail": EXCESS_FAIL,
            "mi_share_warning": MI_WARN,
        },
    }
    if len(uniq) < 2:
        return {**base, "verdict": "skipped", "reason": "one source only: nothing to confound with"}
    mi, mi_share = mutual_information(sources, labels)
    per_label = _probe_per_label(features, pixels, sources, labels, groups, classes, seed)
    probed = {k: v for k, v in per_label.items() if "skipped" not in v}
    mi_verdict = "warning" if mi_share >= MI_WARN else "ok"
    if not probed:
        return {
            **base,
            "verdict": worst_verdict(mi_verdict, "warning"),
            "per_label": per_label,
            "mutual_information_bits": mi,
            "mutual_information_share_of_label": mi_share,
            "reading": (
                f"No class comes from two sources, so source and label cannot be told apart: a source "
                f"detector would score like a disease detector. The source alone gives away {mi_share:.0%} "
                "of the label's information."
            ),
        }
    worst_label = max(probed, key=lambda k: max(probed[k]["features"], probed[k]["pixels"]) - probed[k]["chance"])
    w = probed[worst_label]
    excess = max(w["features"], w["pixels"]) - w["chance"]
    verdict = worst_verdict(threshold_verdict(excess, EXCESS_WARN, EXCESS_FAIL), mi_verdict)
    return {
        **base,
        "verdict": verdict,
        "per_label": per_label,
        "worst_label": worst_label,
        "excess_over_chance": excess,
        "features_balanced_accuracy": w["features"],
        "pixels_balanced_accuracy": w["pixels"],
        "chance": w["chance"],
        "mutual_information_bits": mi,
        "mutual_information_share_of_label": mi_share,
        "reading": (
            f"Among {worst_label} images, the source is predicted with balanced accuracy {w['features']:.2f} from "
            f"the model's features and {w['pixels']:.2f} from raw pixels (chance {w['chance']:.2f}): "
            + (
                "the images carry a source signature the disease does not explain."
                if excess >= EXCESS_WARN
                else "no source signature beyond the disease."
            )
            + f" The source alone gives away {mi_share:.0%} of the label's information."
        ),
    }


def thumbnails(images: np.ndarray) -> np.ndarray:
    """Raw pixels for the source probe: each image area-averaged to 16 x 16, flattened."""
    small = torch.nn.functional.interpolate(torch.from_numpy(images).float()[:, None], size=(16, 16), mode="area")
    return small.flatten(1).numpy()
