"""Test 1, within-source discrimination: the pairwise AUC of each class pair inside each source that holds two
classes, where the source cannot give the class away; the one figure a source shortcut cannot inflate."""

from __future__ import annotations

import numpy as np

from ..metrics.bootstrap import format_ci
from ..metrics.classification import within_source_auc
from .verdicts import WITHIN_FAIL, WITHIN_WARN, interval_verdict

WITHIN_RESAMPLES = 1000  # patient-bootstrap resamples of the within-source intervals


def within_source_discrimination(
    y: np.ndarray, probs: np.ndarray, classes, patients, sources, resamples: int = WITHIN_RESAMPLES, seed: int = 0
) -> dict:
    """The pairwise AUCs inside each source (``within_source_auc``) and a verdict from the worst pair's
    interval: fail when some pair's upper 95 % bound is below ``WITHIN_FAIL`` (the model cannot be shown
    to beat chance where the source gives nothing away), warning when some pair's value is below
    ``WITHIN_WARN``; skipped when no source holds two classes with enough images."""
    ws = within_source_auc(y, probs, classes, patients, sources, resamples, seed)
    base = {
        "test": "within-source discrimination",
        "metric": ws["metric"],
        "chance": 0.5,
        "thresholds": {"upper_ci_below_fail": WITHIN_FAIL, "value_below_warning": WITHIN_WARN},
        "min_images_per_class": ws["min_images_per_class"],
        "pairs": ws["pairs"],
        "skipped_pairs": ws["skipped"],
        "per_source": ws["per_source"],
    }
    if not ws["pairs"]:
        return {**base, "verdict": "skipped", "reason": ws["note"], "reading": ws["note"]}
    verdict, worst = interval_verdict(ws["pairs"], lambda p: p["auc"], WITHIN_FAIL, WITHIN_WARN)
    a, b = worst["classes"]
    meaning = {
        "fail": f"its upper bound is below {WITHIN_FAIL:.2f}: where the source gives nothing away the model is near "
        "chance, so its overall figures come from telling the sources apart.",
        "warning": f"it is below {WITHIN_WARN:.2f}: weak discrimination where the source cannot help.",
        "ok": f"every pair is at least {WITHIN_WARN:.2f}: the model separates the classes where the source cannot "
        "give them away.",
    }[verdict]
    return {
        **base,
        "verdict": verdict,
        "worst": worst,
        "reading": (
            f"Within {worst['source']}, {a} vs {b} ({worst['counts'][a]['images']} and {worst['counts'][b]['images']} "
            f"images): pairwise AUC {format_ci(worst['auc'])}, the worst of {len(ws['pairs'])} within-source pair(s); "
            f"{meaning} (fail: an upper 95 % bound below {WITHIN_FAIL:.2f}; warning: a value below {WITHIN_WARN:.2f}.)"
        ),
    }
