"""The bootstrap over patients: images of one patient are not independent, so resampling images
would understate the uncertainty; each drawn patient brings all of its images."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

DASH = "—"


def patient_bootstrap(
    flat_metrics: Callable[[np.ndarray], dict[str, float]], patients, resamples: int, seed: int, strata=None
) -> dict[str, dict]:
    """``{key: {"value", "ci95"}}`` for every number ``flat_metrics(idx)`` returns: the value on all
    rows, and the 2.5th and 97.5th percentiles over ``resamples`` bootstrap samples of **patients**
    (each drawn patient brings all of its rows; with ``strata``, ``resample_patients``' stratified draw);
    NaN resamples are ignored, no CI when none is left."""
    patients = np.asarray(patients)
    flat = flat_metrics(np.arange(len(patients)))
    boots = [flat_metrics(idx) for idx in resample_patients(patients, resamples, seed, strata)]
    out = {}
    for key, value in flat.items():
        vals = np.array([b[key] for b in boots], dtype=float) if boots else np.array([])
        vals = vals[~np.isnan(vals)]
        out[key] = {
            "value": value,
            "ci95": [float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))] if len(vals) else None,
        }
    return out


def resample_patients(patients, resamples: int, seed: int, strata=None):
    """The rows of each of ``resamples`` bootstrap samples, one array each. Without ``strata``: as many
    patients as there are, drawn with replacement, each bringing all of its rows. With ``strata`` (one label per
    row, e.g. the site), the bootstrap is stratified: each stratum's patients are drawn among themselves, as
    many as the stratum has, and a drawn patient brings its rows *in that stratum*; so every sample holds each
    stratum with its own number of patients, and no stratum's patient ever stands in for another's."""
    patients = np.asarray(patients)
    if resamples <= 0 or not len(patients):
        return
    rng = np.random.default_rng(seed)
    if strata is None:
        uniq, inverse = np.unique(patients, return_inverse=True)
        members = [np.flatnonzero(inverse == p) for p in range(len(uniq))]
        for _ in range(resamples):
            pick = rng.integers(0, len(uniq), len(uniq))
            yield np.concatenate([members[p] for p in pick])
        return
    strata = np.asarray(strata)
    units = []  # per stratum, the rows of each of its patients
    for s in np.unique(strata):
        rows = np.flatnonzero(strata == s)
        uniq, inverse = np.unique(patients[rows], return_inverse=True)
        units.append([rows[inverse == p] for p in range(len(uniq))])
    for _ in range(resamples):
        yield np.concatenate([members[p] for members in units for p in rng.integers(0, len(members), len(members))])


def bootstrap_info(resamples: int, seed: int) -> dict:
    return {"resamples": resamples, "unit": "patient", "seed": seed}


def finite(v) -> float | None:
    """A finite float, or None for None/NaN/inf/anything not a number."""
    if isinstance(v, bool) or v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def format_value(v, digits: int = 3) -> str:
    f = finite(v)
    return DASH if f is None else f"{f:.{digits}f}"


def format_ci(m, digits: int = 3) -> str:
    """``0.912 (0.871–0.945)`` for ``{"value", "ci95"}``; the value alone without a CI; ``—`` without a
    value. Every table (terminal, HTML) writes intervals this way."""
    value, ci = (m.get("value"), m.get("ci95")) if isinstance(m, dict) else (m, None)
    if finite(value) is None:
        return DASH
    lo, hi = (finite(ci[0]), finite(ci[1])) if isinstance(ci, (list, tuple)) and len(ci) == 2 else (None, None)
    v = format_value(value, digits)
    return v if lo is None or hi is None else f"{v} ({format_value(lo, digits)}–{format_value(hi, digits)})"
