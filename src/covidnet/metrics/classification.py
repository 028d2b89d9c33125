"""Classification metrics: per class (one-vs-rest) sensitivity, PPV, **NPV**, specificity, F1 and
ROC-AUC, their macro averages, accuracy and the confusion matrix, each with a 95 % interval from the
patient bootstrap; per source; **within source**; and what training logs after each epoch.

NPV, the share of images called negative for a class that truly are: users of the reference ask for
it and compute it from the wrong margin. From the one-vs-rest confusion matrix of class c,
NPV = TN / (TN + FN), where FN are images of class c predicted as another class.

Within-source discrimination: when each source contributes different classes (COVIDx's COVID-19 images
and controls come from different hospitals), a model that recognises the hospital scores well on every
figure above. Among the images of *one* source, the source cannot give the class away, so for every
source holding two classes and every pair (a, b) of them, ``within_source_auc`` reports the **pairwise
AUC**: restricted to that source's images of class a or b, the ROC-AUC of the score P(a) / (P(a) + P(b))
for "is of class a" (the probability of a given that the image is a or b; for a softmax, a monotone
function of the logit difference z_a - z_b). It is symmetric (scoring b with P(b) / (P(a) + P(b)) gives the
same AUC) and, unlike P(a) alone, it does not move when the model shifts probability to a third class for
a whole source. Hand & Till (2001) average instead the AUCs of P(a) and of P(b) on the same subset
(scikit-learn's ``multi_class="ovo"``); that figure is given beside it (``hand_till_auc``, no interval).
For a two-class model the two coincide.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .bootstrap import bootstrap_info, patient_bootstrap
from .calibration import expected_calibration_error

METRICS = ("sensitivity", "ppv", "npv", "specificity", "f1", "auc")
MIN_IMAGES_PER_CLASS = 2  # a class pair within a source is scored when each class has this many images
NO_WITHIN_SOURCE = "no source holds two classes: no confound-resistant figure exists for this data"
PAIRWISE_AUC = "ROC-AUC of P(a) / (P(a) + P(b)) among one source's images of class a or b"


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
    ECE; the same per source (when there are several); the pairwise AUCs within each source."""
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
    out["within_source"] = within_source_auc(y, probs, classes, patients, sources, resamples, seed)
    return out


# --- within source ---------------------------------------------------------------------------------------


def rank_auc(positive: np.ndarray, score: np.ndarray) -> float:
    """ROC-AUC as the Mann-Whitney statistic (ties count half), the value ``roc_auc_score`` gives, without
    its input checks (the bootstrap calls it thousands of times); NaN without both classes."""
    from scipy.stats import rankdata

    positive = np.asarray(positive, bool)
    n1 = int(positive.sum())
    n0 = len(positive) - n1
    if n1 == 0 or n0 == 0:
        return float("nan")
    ranks = rankdata(score)
    return float((ranks[positive].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def average_precision(positive: np.ndarray, score: np.ndarray) -> float:
    """The area under the precision-recall curve as scikit-learn's ``average_precision_score`` computes it (the
    mean of the precision at each positive, ties taken together), without its input checks; NaN without a
    positive."""
    positive = np.asarray(positive, bool)
    n1 = int(positive.sum())
    if n1 == 0:
        return float("nan")
    order = np.argsort(-np.asarray(score, dtype=np.float64), kind="stable")
    s, hits = np.asarray(score, dtype=np.float64)[order], positive[order]
    last = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]  # the end of each run of tied scores
    tp = np.cumsum(hits)[last]
    precision, recall = tp / (last + 1), tp / n1
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def pairwise_score(probs: np.ndarray, a: int, b: int) -> np.ndarray:
    """P(a) / (P(a) + P(b)) per row (0.5 where both are 0): the probability of class a given a or b."""
    pa, pb = probs[:, a].astype(np.float64), probs[:, b].astype(np.float64)
    total = pa + pb
    return np.divide(pa, total, out=np.full(len(pa), 0.5), where=total > 0)


def pairwise_auc(y: np.ndarray, probs: np.ndarray, a: int, b: int) -> float:
    """The pairwise AUC of classes ``a`` and ``b``: among the rows of class a or b, the ROC-AUC of
    P(a) / (P(a) + P(b)) for "is of class a"; NaN unless both classes are there."""
    keep = (y == a) | (y == b)
    return rank_auc(y[keep] == a, pairwise_score(probs[keep], a, b))


def hand_till_auc(y: np.ndarray, probs: np.ndarray, a: int, b: int) -> float:
    """Hand & Till's A(a, b): among the rows of class a or b, the mean of the AUCs of P(a) and of P(b)."""
    keep = (y == a) | (y == b)
    return (rank_auc(y[keep] == a, probs[keep, a]) + rank_auc(y[keep] == b, probs[keep, b])) / 2


def _class_counts(y: np.ndarray, patients: np.ndarray, c: int) -> dict:
    return {"images": int((y == c).sum()), "patients": int(len(np.unique(patients[y == c])))}


def _source_pairs(y, probs, classes, patients, resamples: int, seed: int) -> tuple[list, list, dict | None]:
    """One source's (scored pairs, skipped pairs, macro over its scored pairs)."""
    present = [c for c in range(len(classes)) if (y == c).any()]
    pairs = [(a, b) for i, a in enumerate(present) for b in present[i + 1 :]]
    counts = {c: _class_counts(y, patients, c) for c in present}
    scored = [(a, b) for a, b in pairs if min(counts[a]["images"], counts[b]["images"]) >= MIN_IMAGES_PER_CLASS]
    skipped = [
        {
            "classes": [classes[a], classes[b]],
            "counts": {classes[a]: counts[a], classes[b]: counts[b]},
            "reason": f"fewer than {MIN_IMAGES_PER_CLASS} images of "
            + " and ".join(classes[c] for c in (a, b) if counts[c]["images"] < MIN_IMAGES_PER_CLASS),
        }
        for a, b in pairs
        if (a, b) not in scored
    ]
    if not scored:
        return [], skipped, None

    def flat(idx):
        aucs = {f"{a}|{b}": pairwise_auc(y[idx], probs[idx], a, b) for a, b in scored}
        finite = [v for v in aucs.values() if not np.isnan(v)]
        return {**aucs, "macro": float(np.mean(finite)) if len(finite) == len(aucs) else float("nan")}

    cis = patient_bootstrap(flat, patients, resamples, seed)
    out = [
        {
            "classes": [classes[a], classes[b]],
            "auc": cis[f"{a}|{b}"],
            "hand_till_auc": hand_till_auc(y, probs, a, b),
            "counts": {classes[a]: counts[a], classes[b]: counts[b]},
        }
        for a, b in scored
    ]
    return out, skipped, {"classes": [classes[c] for c in present], "pairs": len(scored), "macro_auc": cis["macro"]}


def pairs_by_group(
    y: np.ndarray, probs: np.ndarray, classes: Sequence[str], patients, groups, resamples: int, seed: int
):
    """For each group of images (``groups``: one label per row; sorted), ``(group, scored pairs, skipped pairs,
    summary or None)``: the pairwise AUC of every class pair inside the group with at least
    ``MIN_IMAGES_PER_CLASS`` images of each class, with a 95 % interval from a bootstrap over the group's own
    patients; the pairs below that, with their counts; the macro average of its pairs. Within source, the groups
    are sources; within site, sites."""
    groups = np.asarray(groups)
    for g in sorted(set(groups.tolist())):
        m = groups == g
        yield (g, *_source_pairs(y[m], probs[m], classes, patients[m], resamples, seed))


def within_source_auc(
    y: np.ndarray, probs: np.ndarray, classes: Sequence[str], patients, sources, resamples: int = 1000, seed: int = 0
) -> dict:
    """The pairwise AUC (see the module's docstring) of every class pair inside every source that holds
    two classes, with a 95 % patient-bootstrap interval (patients of that source resampled) and the
    images and patients of each class behind it; pairs with fewer than ``MIN_IMAGES_PER_CLASS`` images
    of a class are listed as skipped with their counts; per source, the macro average of its pairs.
    ``pairs`` is empty, with a ``note``, when no source holds two classes."""
    y = np.asarray(y)
    probs = np.asarray(probs)
    patients = np.asarray(patients if patients is not None else [str(i) for i in range(len(y))])
    out = {
        "metric": PAIRWISE_AUC,
        "min_images_per_class": MIN_IMAGES_PER_CLASS,
        "pairs": [],
        "skipped": [],
        "per_source": {},
        "note": None,
    }
    if sources is None:
        return {**out, "note": "the images carry no source: no within-source figure can be computed"}
    for s, pairs, skipped, summary in pairs_by_group(y, probs, classes, patients, sources, resamples, seed):
        out["pairs"] += [{"source": s, **p} for p in pairs]
        out["skipped"] += [{"source": s, **p} for p in skipped]
        if summary:
            out["per_source"][s] = summary
    if not out["pairs"]:
        out["note"] = (
            NO_WITHIN_SOURCE
            if not out["skipped"]
            else f"no source holds two classes with at least {MIN_IMAGES_PER_CLASS} images each: "
            "no confound-resistant figure exists for this data"
        )
    return out
