"""Within-site discrimination: the figures a hospital shortcut cannot inflate, inside a source as well.

A source is not a hospital: ieee8023's collection gathers films from papers and hospitals all over the world
(its ``location`` column), so "cohen, normal vs COVID-19" mostly compares one hospital's normal films with
other hospitals' COVID-19 films. Here the strata are **sites within sources** (``Record.site``; the same site
name from two sources is two strata, so every within-site pair is also a within-source pair), and images whose
site is unknown take no part (they are counted).

Per site, every class pair with at least ``MIN_IMAGES_PER_CLASS`` images of each class gets the pairwise AUC of
``within_source_auc`` (ROC-AUC of P(a) / (P(a) + P(b)) among the site's images of a or b), with an interval from
a bootstrap over the site's patients.

**The pooled within-site AUC** (the stratified AUC): for classes a and b, among all (a-image, b-image) pairs
whose two images come from the same site, the share the score s = P(a) / (P(a) + P(b)) orders correctly,
ties counting a half:

    AUC_site(a, b) = sum_k U_k / sum_k n_a,k n_b,k,
    U_k = #{(i, j): i of class a, j of class b, both in site k, s_i > s_j} + 1/2 #{... s_i = s_j},

that is, the per-site AUCs averaged with weights n_a,k n_b,k (the Mann-Whitney U of each site, summed). Every
site holding both classes counts, however few its images. Over **all class pairs** the U and the pair counts
are summed over the pairs too; over **the pairs with the positive class** (COVID-19, or ``positive``) over
those pairs alone. With one site it is the ordinary pairwise AUC (``roc_auc_score`` on that site's images).

The same pooled over **(site, view) strata** (``records.VIEWS``: PA, AP, AP supine; images of unknown view take
no part there, counted): pairs whose two films also share the view, so positioning cannot order them. Beside
it, **the view alone as a predictor of the class**: the pooled within-site AUC of the score "is AP" (AP or AP
supine: 1, PA: 0) for "is of class b", the later class of the pair (pneumonia, or COVID-19), on the images of
known view. 0.5: within its sites the view says nothing of the class; above, AP films go with b ("AP means
ill"); below, with a ("AP means normal", NIH's normals). Sites where the view points opposite ways partly
cancel in that figure, so ``view_alone_best`` gives, site by site, the better of the two orientations
(sum_k max(U_k, n_k - U_k) / sum_k n_k): the most a view rule that also knew the site could reach, an upper
bound that favours small sites.

**The interval**: a patient bootstrap stratified by site (``bootstrap.resample_patients`` with the sites as
strata): each site's patients are drawn with replacement among themselves, as many as the site has, so every
resample keeps every site with its own number of patients and never lends one site's patients to another. The
(site, view) and view-alone figures are computed on the same resamples.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..data.records import VIEWS, positive_class
from .bootstrap import DASH, format_ci, patient_bootstrap
from .classification import MIN_IMAGES_PER_CLASS, PAIRWISE_AUC, pairs_by_group, pairwise_score

POOLED_AUC = (
    "share of correctly ordered (class a, class b) image pairs taken within one site (ties count a half), "
    "of the score P(a) / (P(a) + P(b)): the stratified AUC"
)
FIGURES = {
    "site": "pairs within one site",
    "site_view": "pairs within one site and one view (PA, AP, AP supine)",
    "view_alone": "the view alone ('is AP') as a score for the later class, pairs within one site",
    "view_alone_best": "the view alone, each site's better orientation (an upper bound)",
}
POOLED_ROWS = (  # the pooled figures as the terminal and the report list them
    ("site", "within site"),
    ("site_view", "within site and view"),
    ("view_alone", "view alone ('is AP')"),
    ("view_alone_best", "view alone, best orientation per site"),
)
SEP = "\x1f"  # joins a stratum's parts into one key; never in a name


def stratum_pair_counts(positive, score, strata) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per stratum: its label (``np.unique`` of ``strata``, in that order); U, the (positive, negative) pairs of
    the stratum whose positive image has the higher score, ties counting a half; and the number of such pairs.
    Midranks within each stratum: U_k = (sum of the positives' ranks in k) - n_pos,k (n_pos,k + 1) / 2."""
    positive, score, strata = np.asarray(positive, bool), np.asarray(score, float), np.asarray(strata)
    if not len(strata):
        return strata[:0], np.zeros(0), np.zeros(0)
    keys, code = np.unique(strata, return_inverse=True)
    order = np.lexsort((score, code))
    c, v = code[order], score[order]
    n = len(order)
    first = np.r_[True, c[1:] != c[:-1]]  # the first row of each stratum
    start = np.maximum.accumulate(np.where(first, np.arange(n), 0))
    position = np.arange(n) - start + 1.0  # 1-based rank within the stratum
    tie = np.cumsum(first | np.r_[True, v[1:] != v[:-1]]) - 1
    mid = (np.bincount(tie, weights=position) / np.bincount(tie))[tie]
    ranks = np.empty(n)
    ranks[order] = mid
    n_pos = np.bincount(code, weights=positive, minlength=len(keys))
    n_all = np.bincount(code, minlength=len(keys))
    u = np.bincount(code, weights=np.where(positive, ranks, 0.0), minlength=len(keys)) - n_pos * (n_pos + 1) / 2
    return keys, u, n_pos * (n_all - n_pos)


def stratified_auc(positive, score, strata) -> float:
    """The pooled AUC of ``score`` for ``positive`` over pairs taken within one stratum (ties a half); NaN
    where no stratum holds both a positive and a negative."""
    _, u, pairs = stratum_pair_counts(positive, score, strata)
    return float(u.sum() / pairs.sum()) if pairs.sum() else float("nan")


Totals = tuple[float, float, frozenset]  # U, pairs, the strata that hold pairs


def _pair_totals(y, probs, site, view, a: int, b: int) -> dict[str, Totals]:
    """For classes a and b: per figure (``FIGURES``), its totals over strata."""
    m = (y == a) | (y == b)
    known = m & (view >= 0)
    out = {}
    for name, positive, score, strata in (
        ("site", y[m] == a, pairwise_score(probs[m], a, b), site[m]),
        ("site_view", y[known] == a, pairwise_score(probs[known], a, b), (site * len(VIEWS) + view)[known]),
        ("view_alone", y[known] == b, (view[known] > 0).astype(float), site[known]),
    ):
        keys, u, n = stratum_pair_counts(positive, score, strata)
        held = frozenset(keys[n > 0].tolist())
        out[name] = (float(u.sum()), float(n.sum()), held)
        if name == "view_alone":
            out["view_alone_best"] = (float(np.maximum(u, n - u).sum()), float(n.sum()), held)
    return out


def pooled_figures(y, probs, site, view, class_pairs, positive: int | None) -> dict[str, Totals]:
    """Every pooled figure's totals, as ``{"<figure>.<a>|<b>" | "<figure>.all" | "<figure>.covid": (U, pairs,
    strata)}``; ``site`` and ``view``: integer codes per row (view: index in ``VIEWS``, -1 unknown)."""
    out = {}
    for a, b in class_pairs:
        for name, t in _pair_totals(y, probs, site, view, a, b).items():
            out[f"{name}.{a}|{b}"] = t
    for name in FIGURES:
        for group, pairs in (("all", class_pairs), ("covid", [p for p in class_pairs if positive in p])):
            parts = [out[f"{name}.{a}|{b}"] for a, b in pairs]
            out[f"{name}.{group}"] = (
                sum(p[0] for p in parts),
                sum(p[1] for p in parts),
                frozenset().union(*(p[2] for p in parts)),
            )
    return out


def _ratio(t: Totals) -> float:
    return t[0] / t[1] if t[1] else float("nan")


def strata_codes(sources, sites, views, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[tuple[str, str]]]:
    """Rows of known site; their site codes (one per (source, site)); their view codes (-1 unknown); the
    (source, site) of each code."""
    sources = np.asarray(sources if sources is not None else [""] * n, dtype=object).astype(str)
    sites = np.asarray(sites, dtype=object).astype(str)
    known = np.flatnonzero(sites != "")
    keys, code = np.unique(np.char.add(np.char.add(sources[known], SEP), sites[known]), return_inverse=True)
    view_index = {v: k for k, v in enumerate(VIEWS)}
    views = [""] * n if views is None else views
    view = np.array([view_index.get(str(views[i]), -1) for i in known], dtype=np.int64)
    return known, code.astype(np.int64), view, [tuple(k.split(SEP, 1)) for k in keys.tolist()]


def within_site_auc(
    y: np.ndarray,
    probs: np.ndarray,
    classes: Sequence[str],
    patients,
    sources,
    sites,
    views=None,
    resamples: int = 1000,
    seed: int = 0,
) -> dict:
    """The within-site figures of the module's docstring: per site, the pairwise AUC of each class pair (with
    its counts; pairs below ``MIN_IMAGES_PER_CLASS`` skipped); pooled over sites, (site, view) strata and the
    view alone, for each class pair, all pairs and the pairs with the positive class, each with its number of
    image pairs and strata and a 95 % interval from the site-stratified patient bootstrap. ``sites``: one per
    image, '' unknown; ``views``: 'PA', 'AP', 'AP supine' or '' (``records.view_position``)."""
    y, probs = np.asarray(y), np.asarray(probs)
    patients = np.asarray(patients if patients is not None else [str(i) for i in range(len(y))])
    out = _empty(classes, resamples, seed)
    if sites is None:
        return {**out, "note": "the images carry no site: no within-site figure can be computed"}
    known, site, view, names = strata_codes(sources, sites, views, len(y))
    unknown = np.setdiff1d(np.arange(len(y)), known)
    out["unknown_site"] = {"images": int(len(unknown)), "patients": int(len(np.unique(patients[unknown])))}
    out["unknown_view"] = {"images": int((view < 0).sum())}
    if not len(known):
        return {**out, "note": "no image has a known site: no within-site figure can be computed"}
    yk, pk, patk = y[known], probs[known], patients[known]
    out.update(_per_site(yk, pk, classes, patk, site, names, resamples, seed))
    out["pooled"] = _pooled(yk, pk, classes, patk, site, view, resamples, seed)
    if not out["pooled"]["site"]["all"]["image_pairs"]:
        out["note"] = "no site holds two classes: no within-site figure exists for this data"
    return out


def _empty(classes: Sequence[str], resamples: int, seed: int) -> dict:
    return {
        "metric": PAIRWISE_AUC.replace("one source's", "one site's"),
        "pooled_metric": POOLED_AUC,
        "strata": "sites within sources",
        "positive_class": positive_class(classes),
        "min_images_per_class": MIN_IMAGES_PER_CLASS,
        "unknown_site": {"images": 0, "patients": 0},
        "unknown_view": {"images": 0},
        "pooled": None,
        "pairs": [],
        "skipped": [],
        "per_site": [],
        "bootstrap": {"resamples": resamples, "unit": "patient, resampled within its site", "seed": seed},
        "note": None,
    }


def _per_site(y, probs, classes, patients, site, names, resamples: int, seed: int) -> dict:
    """Per site, the pairwise AUCs of its class pairs (``pairs_by_group`` with the sites as groups)."""
    out = {"pairs": [], "skipped": [], "per_site": []}
    for code, pairs, skipped, summary in pairs_by_group(y, probs, classes, patients, site, resamples, seed):
        where = dict(zip(("source", "site"), names[code]))
        out["pairs"] += [{**where, **p} for p in pairs]
        out["skipped"] += [{**where, **p} for p in skipped]
        if summary:
            out["per_site"].append({**where, **summary})
    return out


def _pooled(y, probs, classes, patients, site, view, resamples: int, seed: int) -> dict:
    """The pooled figures with their site-stratified bootstrap intervals and their counts."""
    k = len(classes)
    class_pairs = [(a, b) for a in range(k) for b in range(a + 1, k)]
    positive = classes.index(positive_class(classes)) if positive_class(classes) in classes else None
    totals = pooled_figures(y, probs, site, view, class_pairs, positive)
    cis = patient_bootstrap(
        lambda idx: {
            key: _ratio(t)
            for key, t in pooled_figures(y[idx], probs[idx], site[idx], view[idx], class_pairs, positive).items()
        },
        patients,
        resamples,
        seed,
        strata=site,
    )

    def figure(key: str) -> dict:
        value = cis[key]
        return {**value, "image_pairs": int(totals[key][1]), "strata": len(totals[key][2])}

    return {
        name: {
            "all": figure(f"{name}.all"),
            "covid": figure(f"{name}.covid"),
            "by_pair": [{"classes": [classes[a], classes[b]], **figure(f"{name}.{a}|{b}")} for a, b in class_pairs],
        }
        for name in FIGURES
    }


def pooled_rows(ws: dict) -> list[list[str]]:
    """``within_site_auc``'s pooled figures as table rows of text (``POOLED_ROWS``): the figure, all class pairs,
    the pairs with the positive class (each with its interval), the image pairs behind each (all / positive),
    the strata; a dash where a figure is missing."""
    rows = []
    for key, name in POOLED_ROWS:
        f = (ws.get("pooled") or {}).get(key) or {}
        a, c = f.get("all") or {}, f.get("covid") or {}
        pairs = f"{a.get('image_pairs', DASH)} / {c.get('image_pairs', DASH)}"
        rows.append([name, format_ci(a), format_ci(c), pairs, str(a.get("strata", DASH))])
    return rows
