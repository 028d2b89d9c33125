"""Test 1, within-source and within-site discrimination: the pairwise AUC of each class pair inside each source
that holds two classes, where the source cannot give the class away; and, since a source is not a hospital, the
pooled AUC of the pairs taken within one site (``metrics.within``), with the same pooled within (site, view) and
the view alone beside it. The figures a source or hospital shortcut cannot inflate."""

from __future__ import annotations

import math

import numpy as np

from ..metrics.bootstrap import format_ci
from ..metrics.classification import within_source_auc
from ..metrics.within import within_site_auc
from .verdicts import WITHIN_FAIL, WITHIN_WARN, interval_verdict

WITHIN_RESAMPLES = 1000  # patient-bootstrap resamples of the within-source and within-site intervals


def within_source_discrimination(
    y: np.ndarray,
    probs: np.ndarray,
    classes,
    patients,
    sources,
    resamples: int = WITHIN_RESAMPLES,
    seed: int = 0,
    sites=None,
    views=None,
) -> dict:
    """The pairwise AUCs inside each source (``within_source_auc``), the within-site figures
    (``within_site_auc``, where ``sites`` are given), and a verdict from the worst of the source pairs and the
    two pooled within-site figures (all class pairs, pairs with the positive class): fail when some upper 95 %
    bound is below ``WITHIN_FAIL`` (the model cannot be shown to beat chance where the source or the hospital
    gives nothing away), warning when some value is below ``WITHIN_WARN``; skipped when no source holds two
    classes with enough images."""
    ws = within_source_auc(y, probs, classes, patients, sources, resamples, seed)
    site = within_site_auc(y, probs, classes, patients, sources, sites, views, resamples, seed)
    base = {
        "test": "within-source discrimination",
        "metric": ws["metric"],
        "chance": 0.5,
        "thresholds": {"upper_ci_below_fail": WITHIN_FAIL, "value_below_warning": WITHIN_WARN},
        "min_images_per_class": ws["min_images_per_class"],
        "pairs": ws["pairs"],
        "skipped_pairs": ws["skipped"],
        "per_source": ws["per_source"],
        "within_site": site,
    }
    if not ws["pairs"]:
        return {**base, "verdict": "skipped", "reason": ws["note"], "reading": ws["note"]}
    verdict, worst = interval_verdict(ws["pairs"] + pooled_items(site), lambda p: p["auc"], WITHIN_FAIL, WITHIN_WARN)
    meaning = {
        "fail": f"its upper bound is below {WITHIN_FAIL:.2f}: where the source gives nothing away the model is near "
        "chance, so its overall figures come from telling the sources apart.",
        "warning": f"it is below {WITHIN_WARN:.2f}: weak discrimination where the source cannot help.",
        "ok": f"every figure is at least {WITHIN_WARN:.2f}: the model separates the classes where the source cannot "
        "give them away.",
    }[verdict]
    rule = f"(fail: an upper 95 % bound below {WITHIN_FAIL:.2f}; warning: a value below {WITHIN_WARN:.2f}.)"
    return {
        **base,
        "verdict": verdict,
        "worst": worst,
        "reading": f"{_worst_line(worst, len(ws['pairs']))}; {meaning} {rule}{site_line(site)}",
    }


def pooled_items(site: dict) -> list[dict]:
    """The pooled within-site figures the verdict judges beside the source pairs (those with image pairs)."""
    if not site.get("pooled"):
        return []
    out = []
    for key, what in (("all", "all class pairs"), ("covid", f"the pairs with {site['positive_class']}")):
        f = site["pooled"]["site"][key]
        if f["image_pairs"] and math.isfinite(f["value"]):
            out.append({"pooled": "within site", "classes": what, "auc": f, "image_pairs": f["image_pairs"]})
    return out


def _worst_line(worst: dict, n_pairs: int) -> str:
    if "pooled" in worst:
        return (
            f"Pooled within sites, {worst['classes']} ({worst['image_pairs']} image pairs taken at one site): AUC "
            f"{format_ci(worst['auc'])}, the worst of the within-source pairs and the pooled within-site figures"
        )
    a, b = worst["classes"]
    return (
        f"Within {worst['source']}, {a} vs {b} ({worst['counts'][a]['images']} and {worst['counts'][b]['images']} "
        f"images): pairwise AUC {format_ci(worst['auc'])}, the worst of {n_pairs} within-source pair(s)"
    )


def site_line(site: dict) -> str:
    """The pooled within-site figures in one sentence, for the reading; '' where there are none."""
    if not site.get("pooled") or site.get("note"):
        return f" Within site: {site['note']}." if site.get("note") else ""
    p = site["pooled"]
    return (
        f" Pooled within sites (all class pairs, {p['site']['all']['image_pairs']} image pairs; "
        f"{site['unknown_site']['images']} images of unknown site left out): AUC {format_ci(p['site']['all'])}; "
        f"within site and view {format_ci(p['site_view']['all'])}; the view alone {format_ci(p['view_alone']['all'])} "
        "(0.5: positioning explains nothing)."
    )
