"""A study's summary: per arm, every figure's mean over seeds with a patient-bootstrap interval of that mean,
its spread over the seeds, and its paired difference from the reference arm (the same resamples score both);
the audit's figures per seed; and the findings, sentences from the numbers alone."""

from __future__ import annotations

import json

import numpy as np

from ..errors import ConfigError
from ..metrics.bootstrap import bootstrap_info, format_ci, patient_bootstrap
from ..metrics.classification import average_precision, pairwise_auc, point_metrics, rank_auc, within_source_auc
from ..metrics.within import FIGURES as SITE_FIGURES
from ..metrics.within import pooled_figures, strata_codes, within_site_auc
from .planning import StudyConfig, run_dir
from .runs import AUDIT_FILE, PREDICTIONS_FILE, audit_figures

SITE_KEYS = ("site.all", "site.covid", "site_view.all", "site_view.covid", "view_alone.all")  # pooled within-site


def _figures(y, probs, classes, sources, pairs, strata=None) -> dict[str, float]:
    """One run's figures on the rows given: accuracy, each class's sensitivity and PPV, each within-source
    pair's AUC, their mean (``within.macro``) and the mean of the pairs with COVID-19 (``within.covid``); with
    ``strata`` (``_site_strata``: each row's site and view codes, -1 unknown), the pooled within-site figures
    (``metrics.within``: over sites, over (site, view) strata, the view alone) for all class pairs and the
    pairs with COVID-19, as ``site.all``, ``site.covid``, …"""
    point = point_metrics(y, probs, classes)
    out = {"accuracy": point["accuracy"]}
    for c in classes:
        out[f"{c}.sensitivity"] = point["per_class"][c]["sensitivity"]
        out[f"{c}.ppv"] = point["per_class"][c]["ppv"]
    aucs = [rank_auc(y == k, probs[:, k]) for k in range(len(classes))]
    out["macro.auroc"] = _nanmean(aucs)
    out[f"{classes[-1]}.auroc"] = aucs[-1]  # COVID-19 (positive when binary) against the rest
    out[f"{classes[-1]}.auprc"] = average_precision(y == len(classes) - 1, probs[:, -1])
    within, covid = [], []
    positive = classes[-1]  # COVID-19 (positive when binary): the last class, by the project's order
    for p in pairs:
        a, b = classes.index(p["classes"][0]), classes.index(p["classes"][1])
        m = sources == p["source"]
        auc = pairwise_auc(y[m], probs[m], a, b)
        out[pair_key(p)] = auc
        within.append(auc)
        if positive in p["classes"]:
            covid.append(auc)
    out["within.macro"] = _nanmean(within)
    out["within.covid"] = _nanmean(covid)
    if strata is not None:
        site, view = strata
        known = site >= 0
        k = len(classes)
        totals = pooled_figures(
            y[known], probs[known], site[known], view[known], [(a, b) for a in range(k) for b in range(a + 1, k)], k - 1
        )
        for key in SITE_KEYS:
            u, n, _ = totals[key]
            out[key] = u / n if n else float("nan")
    return out


def _site_strata(preds: dict, sources) -> tuple[np.ndarray, np.ndarray] | None:
    """Each row's site code (one per (source, site); -1 unknown) and view code (index in ``records.VIEWS``; -1
    unknown), from the predictions' ``sites`` and ``views``; None where no site is known. (Predictions written
    before they had sites, a study resumed from an earlier version, have none: ``summarize`` does not ask.)"""
    sites = preds["sites"].astype(str)
    known = sites != ""
    if not known.any():
        return None
    rows, code, view, _ = strata_codes(sources, sites, preds["views"].astype(str), len(sites))
    site_code, view_code = np.full(len(sites), -1, np.int64), np.full(len(sites), -1, np.int64)
    site_code[rows], view_code[rows] = code, view
    return site_code, view_code


def _nanmean(values) -> float:
    finite = [v for v in values if v == v]
    return float(np.mean(finite)) if finite and len(finite) == len(values) else float("nan")


def pair_key(p: dict) -> str:
    return f"within:{p['source']}:{p['classes'][0]} vs {p['classes'][1]}"


def _load_predictions(cfg: StudyConfig, results: list[dict]) -> dict:
    """Each (arm, seed)'s predictions: its run's, or with ``--folds`` its folds' put together in row order, one
    prediction for every image of the dataset (refused when an image is scored twice or not at all)."""
    parts: dict = {}
    for r in results:
        with np.load(run_dir(cfg, r["variant"], r["seed"], r.get("fold")) / PREDICTIONS_FILE) as z:
            parts.setdefault((r["variant"], r["seed"]), []).append({k: z[k] for k in z.files})
    preds = {}
    for key, runs in parts.items():
        p = {k: np.concatenate([run[k] for run in runs]) for k in runs[0]}
        if cfg.folds:
            order = np.argsort(p["rows"], kind="stable")
            p = {k: v[order] for k, v in p.items()}
            if not np.array_equal(p["rows"], np.arange(len(p["rows"]))):
                raise ConfigError(f"run {key[0]} seed {key[1]}: its folds do not score every image exactly once")
        preds[key] = p
    first = next(iter(preds.values()))
    for key, p in preds.items():
        same = all(np.array_equal(p[k], first[k]) for k in ("names", "y", "patients", "sources") if k in p)
        if not same:
            raise ConfigError(f"run {key[0]} seed {key[1]} was evaluated on other images than the rest of the study")
    return preds


def _seed_audits(cfg: StudyConfig, results: list[dict], arm: str) -> list[dict]:
    """Per seed of ``arm``, the audit's figures: its run's, or with ``--folds`` its folds' together (each
    figure the mean over the folds, each verdict the most severe)."""
    out = []
    for seed in sorted({r["seed"] for r in results if r["variant"] == arm}):
        runs = [r for r in results if r["variant"] == arm and r["seed"] == seed]
        audits = [audit_figures(json.loads((run_dir(cfg, arm, seed, r.get("fold")) / AUDIT_FILE).read_text()))
                  for r in runs]  # fmt: skip
        out.append(audits[0] if len(audits) == 1 else _over_folds(audits))
    return out


SEVERITY = ("skipped", "ok", "warning", "fail")


def _over_folds(audits: list[dict]) -> dict:
    merged = {
        "verdicts": {t: max((a["verdicts"][t] for a in audits), key=SEVERITY.index) for t in audits[0]["verdicts"]}
    }
    if all("occlusion_auc" in a for a in audits):
        merged["occlusion_auc"] = {
            m: _mean([a["occlusion_auc"].get(m) for a in audits]) for m in audits[0]["occlusion_auc"]
        }
    if all("attention_worst_excess" in a for a in audits):
        merged["attention_worst_excess"] = _mean([a["attention_worst_excess"] for a in audits])
    return merged


def _mean(values) -> float | None:
    finite = [float(v) for v in values if v is not None and v == v]
    return float(np.mean(finite)) if finite else None


def summarize(cfg: StudyConfig, results: list[dict]) -> dict:
    """Per variant (the arms of ``cfg.design``, its reference first): every figure's seed mean with its
    patient-bootstrap interval, its spread over the seeds, the seeds' own values, and its paired difference
    from the reference (``difference_from_baseline``); the audit's figures per seed."""
    design = cfg.design
    preds = _load_predictions(cfg, results)
    classes = results[0]["classes"]
    some = next(iter(preds.values()))
    y, patients, sources = some["y"], some["patients"], some["sources"]
    ws = within_source_auc(y, some["probs"], classes, patients, sources, resamples=0)
    pairs = [{"source": p["source"], "classes": p["classes"], "counts": p["counts"]} for p in ws["pairs"]]
    names = [n for n in design.order(cfg.names()) if n in {r["variant"] for r in results}]
    seeds = {n: sorted(s for v, s in preds if v == n) for n in names}
    strata = _site_strata(some, sources) if all("sites" in p for p in preds.values()) else None
    site = _site_counts(some, classes, patients, sources) if strata is not None else None

    def per_seed(n, idx):
        st = None if strata is None else (strata[0][idx], strata[1][idx])
        return [_figures(y[idx], preds[(n, s)]["probs"][idx], classes, sources[idx], pairs, st) for s in seeds[n]]

    def seed_mean(figs: list[dict]) -> dict:
        return {k: _nanmean([f[k] for f in figs]) for k in figs[0]}

    def flat(idx):
        means = {n: seed_mean(per_seed(n, idx)) for n in names}
        out = {}
        for n in names:
            for k, v in means[n].items():
                out[f"{n}|{k}"] = v
                out[f"{n}|diff|{k}"] = v - means[design.reference_for(n)][k]
        return out

    cis = patient_bootstrap(flat, patients, cfg.resamples, seed=0)
    everything = np.arange(len(y))
    variants = {}
    for n in names:
        own = per_seed(n, everything)
        figures = {}
        for k in own[0]:
            values = [f[k] for f in own]
            figures[k] = {
                **cis[f"{n}|{k}"],
                "sd_over_seeds": float(np.std(values, ddof=1)) if len(values) > 1 else None,
                "seeds": values,
                "difference_from_baseline": cis[f"{n}|diff|{k}"] if n != design.reference_for(n) else None,
            }
        audits = _seed_audits(cfg, results, n)
        variants[n] = {
            "about": design.arms[n].about,
            "settings": design.arms[n].settings,
            "seeds": seeds[n],
            "figures": figures,
            "audit": _audit_summary(audits),
        }
    return {
        "classes": classes,
        "n": int(len(y)),
        "n_patients": int(len(np.unique(patients))),
        "pairs": pairs,
        "skipped_pairs": ws["skipped"],
        "within_source_note": ws["note"],
        "within_site": site,
        "bootstrap": {**bootstrap_info(cfg.resamples, 0), "of": "the mean over seeds"},
        "variants": variants,
        "findings": findings(
            variants, pairs, design.reference_for if design.references else design.reference, site is not None
        ),
    }


def _site_counts(preds: dict, classes, patients, sources) -> dict:
    """What the pooled within-site figures rest on (the same images in every arm): per figure, the image pairs
    and strata behind all class pairs, the pairs with COVID-19 and each class pair; the images of unknown site
    and view; the sites holding two classes with their counts."""
    ws = within_site_auc(
        preds["y"], preds["probs"], classes, patients, sources, preds["sites"].astype(str),
        preds["views"].astype(str), resamples=0,
    )  # fmt: skip
    pooled = ws["pooled"] or {}
    return {
        "figures": {k: v for k, v in SITE_FIGURES.items()},
        "unknown_site": ws["unknown_site"],
        "unknown_view": ws["unknown_view"],
        "image_pairs": {
            name: {
                "all": f["all"]["image_pairs"],
                "covid": f["covid"]["image_pairs"],
                "strata": f["all"]["strata"],
                "by_pair": {" vs ".join(p["classes"]): p["image_pairs"] for p in f["by_pair"]},
            }
            for name, f in pooled.items()
        },
        "sites": [
            {"source": p["source"], "site": p["site"], "classes": p["classes"], "counts": p["counts"]}
            for p in ws["pairs"] + ws["skipped"]
        ],
        "note": ws["note"],
    }


def _audit_summary(audits: list[dict]) -> dict:
    """The audit across seeds: each test's verdicts, and the occlusion and attention figures per seed."""
    out = {"verdicts": {}}
    for test in audits[0]["verdicts"]:
        out["verdicts"][test] = [a["verdicts"][test] for a in audits]
    for mode in ("none", "lungs", "border"):
        vals = [a.get("occlusion_auc", {}).get(mode) for a in audits]
        if all(v is not None for v in vals):
            out[f"occlusion_auc_{mode}"] = _spread(vals)
    vals = [a.get("attention_worst_excess") for a in audits]
    if all(v is not None for v in vals):
        out["attention_worst_excess"] = _spread(vals)
    if all(a.get("loso") for a in audits):
        held = sorted(set().union(*(a["loso"] for a in audits)))
        out["loso_external_balanced_accuracy"] = {
            s: _spread([a["loso"].get(s, {}).get("external_balanced_accuracy") for a in audits]) for s in held
        }
        out["loso_drop"] = {s: _spread([_drop(a["loso"].get(s, {})) for a in audits]) for s in held}
    return out


def _drop(r: dict) -> float | None:
    """Balanced accuracy on the other sources' test split minus on the source held out."""
    inside, outside = r.get("internal_balanced_accuracy"), r.get("external_balanced_accuracy")
    return None if inside is None or outside is None else inside - outside


def _spread(values: list) -> dict:
    finite = [float(v) for v in values if v is not None and v == v]
    return {
        "mean": float(np.mean(finite)) if finite else None,
        "sd_over_seeds": float(np.std(finite, ddof=1)) if len(finite) > 1 else None,
        "seeds": values,
    }


def findings(variants: dict, pairs: list, reference, sites: bool = False) -> list[str]:
    """The sentences a reader needs, from the numbers alone: for each mitigation and each within-site (with
    ``sites``, first: a source is not a hospital) and within-source figure, whether its interval excludes the
    value of the ``reference`` arm (the baseline), and its paired difference."""
    if not pairs and not sites:
        return [
            "No source holds two classes in the evaluated split: no within-source figure exists, so the study "
            "cannot say whether a mitigation helps where the source gives nothing away."
        ]
    reference_for = reference if callable(reference) else (lambda n: reference)
    out = []
    site_keys = ["site.all", "site.covid", "site_view.all"] if sites else []
    keys = [*site_keys, "within.macro", "within.covid", *(pair_key(p) for p in pairs)]
    any_excludes = False
    for n, v in variants.items():
        ref = reference_for(n)
        if n == ref:
            continue
        base = variants[ref]["figures"]
        for k in keys:
            f, b = v["figures"].get(k), base.get(k)
            if not f or f["value"] is None or f["value"] != f["value"] or not f["ci95"]:
                continue
            lo, hi = f["ci95"]
            excludes = not (lo <= b["value"] <= hi)
            d = f["difference_from_baseline"]
            dci = d["ci95"]
            if k in ("within.macro", "site.all") or excludes or (dci and (dci[0] > 0 or dci[1] < 0)):
                any_excludes |= excludes
                out.append(
                    f"{n}: {_label(k)} {format_ci(f)} against the {ref}'s {b['value']:.3f} "
                    f"({'its interval excludes' if excludes else 'its interval includes'} the {ref}'s value; "
                    f"paired difference {signed_ci(d)})."
                )
    if not any_excludes:
        said = reference if isinstance(reference, str) else "reference arm"
        where = "within-site or within-source" if sites else "within-source"
        out.append(f"No mitigation's {where} interval excludes the {said}'s value.")
    return out


SITE_LABELS = {
    "site.all": "pooled within-site AUC (all class pairs)",
    "site.covid": "pooled within-site COVID-19 AUC (pairs with COVID-19)",
    "site_view.all": "pooled within-site-and-view AUC (all class pairs)",
    "site_view.covid": "pooled within-site-and-view COVID-19 AUC",
    "view_alone.all": "the view alone, pooled within sites",
}


def _label(key: str) -> str:
    if key in SITE_LABELS:
        return SITE_LABELS[key]
    if key == "within.macro":
        return "within-source AUC (mean of the pairs)"
    if key == "within.covid":
        return "within-source COVID-19 AUC (mean of the pairs with COVID-19)"
    if key.startswith("within:"):
        _, source, pair = key.split(":", 2)
        return f"within {source}, {pair} AUC"
    return key


def signed_ci(m: dict) -> str:
    v, ci = m["value"], m["ci95"]
    if v is None or v != v:
        return "—"
    return f"{v:+.3f}" + (f" ({ci[0]:+.3f} to {ci[1]:+.3f})" if ci else "")


def reference_of(summary: dict) -> str:
    """The arm a summary's others are compared with: its first (``summarize`` puts the reference first)."""
    return next(iter(summary["variants"]))
