"""The audit's page: ``audit.json`` and ``index.html``, the verdicts first, then its figures (``plot_audit``:
every test's figures in one; ``plot_attention``: Grad-CAM over a few images per source with the lungs'
outline), then each test's details and thresholds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..files import jsonable, write_json
from ..report.figures import figure, mpl_text
from ..report.html import escape, write_page

VERDICT_COLOUR = {"ok": "#1e8449", "warning": "#b9770e", "fail": "#c0392b", "skipped": "#777"}


def plot_audit(tests: dict):
    """The audit's figures in one: the within-source pairwise AUCs and the pooled within-site ones (with their
    95 % intervals), the source probes' balanced accuracies and the occlusion AUCs."""
    bars, names, errs = [], [], []
    sp, oc = tests["source_predictability"], tests["occlusion"]
    for p in (tests.get("within_source") or {}).get("pairs", ()):
        v, ci = p["auc"]["value"], p["auc"]["ci95"] or [p["auc"]["value"]] * 2
        names.append(f"within {p['source']}: {' vs '.join(p['classes'])}")
        bars.append(v)
        errs.append((len(bars) - 1, v - ci[0], ci[1] - v))
    pooled = ((tests.get("within_source") or {}).get("within_site") or {}).get("pooled") or {}
    for key, group, label in (
        ("site", "all", "within sites, pooled: all pairs"),
        ("site", "covid", "within sites, pooled: positive-class pairs"),
        ("site_view", "all", "within site and view, pooled"),
        ("view_alone", "all", "within sites: the view alone"),
    ):
        f = (pooled.get(key) or {}).get(group) or {}
        if f.get("image_pairs") and f.get("value") == f.get("value"):  # pairs, and not NaN
            v, ci = f["value"], f["ci95"] or [f["value"]] * 2
            names.append(label)
            bars.append(v)
            errs.append((len(bars) - 1, v - ci[0], ci[1] - v))
    if "features_balanced_accuracy" in sp:
        names += [f"source from features ({sp['worst_label']})", f"source from pixels ({sp['worst_label']})"]
        bars += [sp["features_balanced_accuracy"], sp["pixels_balanced_accuracy"]]
    if oc["verdict"] != "skipped":
        names += ["class AUC: images", "class AUC: lungs hidden", "class AUC: border only"]
        bars += [oc["auc"][m] for m in ("none", "lungs", "border")]
    areas = []  # (row, the lungs' share of the image): where a map blind to the lungs would sit
    for g in (tests.get("attention_inside_lungs") or {}).get("groups", ()):
        v, ci = g["share"]["value"], g["share"]["ci95"] or [g["share"]["value"]] * 2
        names.append(f"attention in lungs: {g['source']} {g['class']}")
        bars.append(v)
        errs.append((len(bars) - 1, v - ci[0], ci[1] - v))
        areas.append((len(bars) - 1, g["lung_area"]))
    fig = figure(7, max(3.2, 1.2 + 0.3 * len(names)))
    ax = fig.add_subplot()
    colour = lambda n: (  # noqa: E731
        "#1f618d"
        if n.startswith("within ")
        else "#888"
        if "images" in n
        else "#27ae60"
        if "attention" in n
        else "#c0392b"
    )
    ax.barh(range(len(names)), bars, color=[colour(n) for n in names])
    ax.set_yticks(range(len(names)), [mpl_text(n) for n in names])
    if errs:
        at, lo, hi = np.array(errs).T
        ax.errorbar(np.array(bars)[at.astype(int)], at, xerr=[lo, hi], fmt="none", ecolor="#000", capsize=3)
    if areas:
        rows, area = np.array(areas).T
        ax.plot(area, rows, "k|", markersize=14, label="lungs' share of the image (a map blind to them)")
        ax.legend(loc="lower right", fontsize=7, frameon=False)
    ax.invert_yaxis()  # top to bottom in the audit's order: within source first
    if "chance" in sp:
        ax.axvline(sp["chance"], color="#555", ls=":", lw=1)
    if oc["verdict"] != "skipped":
        ax.axvline(oc["chance"], color="#000", ls="--", lw=1)
    ax.set_xlim(0, 1)
    ax.set_xlabel(
        "within a source or site: (pooled) pairwise AUC (95 % CI)\nclass: macro AUC (dashed: chance)\n"
        "source: balanced accuracy (dotted: chance)\nattention: share of Grad-CAM mass inside the lungs (95 % CI)"
    )
    return fig


def plot_attention(examples: dict, cols: int = 4):
    """A few images per source (``attention.lung_attention``'s examples): the Grad-CAM map over the image and
    the dilated lung mask's outline, captioned with the share of the map inside it."""
    sources = sorted(examples)
    cols = max(1, min(cols, max(len(v) for v in examples.values())))
    fig = figure(2.5 * cols, 2.8 * len(sources))
    axes = np.atleast_2d(fig.subplots(len(sources), cols, squeeze=False))
    for row, src in zip(axes, sources):
        for ax, e in zip(row, examples[src]):
            ax.imshow(e["image"], cmap="gray", vmin=0, vmax=255)
            ax.imshow(e["cam"], cmap="jet", alpha=0.4, vmin=0, vmax=1)
            ax.contour(e["lungs"].astype(float), levels=[0.5], colors="white", linewidths=1.2)
            ax.set_title(mpl_text(f"{src}: {e['share']:.0%} inside"), fontsize=8.5)
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
        for ax in row[len(examples[src]) :]:
            ax.set_axis_off()
    return fig


def write_audit_report(out_dir: str | Path, audit: dict, examples: dict | None = None) -> Path:
    """``audit.json`` and ``index.html``: the one-screen summary of verdicts first, then the figure, then
    each test's details and thresholds; with ``examples`` (``attention.attention_inside_lungs``), images with
    their Grad-CAM map and lung outline."""
    rows = "".join(
        f"<tr><td>{escape(s['test'])}</td><td style='color:{VERDICT_COLOUR[s['verdict']]};font-weight:bold'>"
        f"{escape(s['verdict'])}</td><td>{escape(s['reading'])}</td></tr>"
        for s in audit["summary"]
    )
    summary = (
        f'<table id="summary"><thead><tr><th>test</th><th>verdict</th><th>what it means</th></tr></thead>'
        f"<tbody>{rows}</tbody></table>"
    )
    details = "".join(
        f"<h3>{escape(v['test'])}</h3><pre>{escape(json.dumps(jsonable(v), indent=2))}</pre>"
        for v in audit["tests"].values()
    )
    figures = [
        (
            "audit.png",
            plot_audit(audit["tests"]),
            "Within-source pairwise AUCs, balanced accuracies of the probes, occlusion AUCs and the share of "
            "attention inside the lungs",
            "audit-figure",
        )
    ]
    if examples:
        figures.append(
            (
                "attention.png",
                plot_attention(examples),
                "Grad-CAM of the called class over a few images per source, with the outline of the dilated "
                "lung mask and the share of the map inside it",
                "attention-figure",
            )
        )
    context = {"checkpoint": audit["checkpoint"], "data": audit["data"], "images": audit["n_images"]}
    write_json(Path(out_dir) / "audit.json", audit)
    return write_page(
        out_dir,
        "Shortcut audit",
        summary,
        figures,
        context,
        after=[f"<section><h2>Details and thresholds</h2>{details}</section>"],
    )
