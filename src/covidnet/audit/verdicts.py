"""The audit's verdict rules and their thresholds: how each test turns its figure into ok, warning or fail.

Every threshold is reported with the figure it judges (each test's ``thresholds``). Three rules serve all
the tests: ``threshold_verdict`` (a figure that is worse the higher it is: warning from ``warn``, fail from
``fail``), ``interval_verdict`` (figures with 95 % intervals: fail when some upper bound is below the fail
threshold) and ``worst_verdict`` (several verdicts as one).
"""

from __future__ import annotations

# verdict thresholds, reported with each figure
WITHIN_FAIL, WITHIN_WARN = 0.6, 0.7  # within-source pairwise AUC: fail if a pair's upper 95 % bound is below
# WITHIN_FAIL (near chance, 0.5), warning if a pair's value is below WITHIN_WARN
EXCESS_WARN, EXCESS_FAIL = 0.10, 0.20  # within-label probe balanced accuracy above chance
OCCLUSION_WARN, OCCLUSION_FAIL = 0.10, 0.20  # macro AUC above 0.5 with the lungs hidden or only the border kept
MI_WARN = 0.10  # share of the label's entropy that the source explains (a dataset property: warning only)
LOSO_WARN, LOSO_FAIL = 0.10, 0.20  # balanced accuracy lost on a held-out source
ATTENTION_FAIL, ATTENTION_WARN = 0.0, 0.05  # on the excess of a group's mean share of Grad-CAM mass inside the
# dilated lungs over the lungs' share of the image (what a map blind to the lungs would score): fail if some
# group's upper 95 % bound is below ATTENTION_FAIL (less attention on the lungs than a blind map: it looks
# elsewhere), warning if some group's mean excess is below ATTENTION_WARN (no more than a blind map)


def threshold_verdict(value: float, warn: float, fail: float) -> str:
    """The rule of a figure that is worse the higher it is: fail from ``fail``, warning from ``warn``, ok below;
    skipped when it is NaN (there was nothing to measure)."""
    if value != value:  # NaN
        return "skipped"
    return "fail" if value >= fail else "warning" if value >= warn else "ok"


def worst_verdict(*verdicts: str) -> str:
    """The worst of ``verdicts`` (fail, warning, ok); skipped only when every one is."""
    order = ["skipped", "ok", "warning", "fail"]
    vs = [v for v in verdicts if v != "skipped"]
    return max(vs, key=order.index) if vs else "skipped"


def interval_verdict(items: list, figure, fail: float, warn: float) -> tuple[str, dict]:
    """The rule of the tests judged on figures with intervals (``figure(item)``: a ``{"value", "ci95"}``):
    fail when some item's upper 95 % bound (its value where it has no interval) is below ``fail``,
    warning when some item's value is below ``warn``, ok otherwise. Returns the verdict and the item it
    rests on (the lowest upper bound for a fail, the lowest value otherwise)."""

    def upper(item):
        f = figure(item)
        return f["ci95"][1] if f["ci95"] else f["value"]

    worst = min(items, key=upper)
    if upper(worst) < fail:
        return "fail", worst
    worst = min(items, key=lambda item: figure(item)["value"])
    return ("warning" if figure(worst)["value"] < warn else "ok"), worst
