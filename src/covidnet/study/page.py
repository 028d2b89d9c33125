"""A study's outputs: ``study.json``, ``table.md`` (a row per arm with its within-site and within-source figures,
what the within-site figures rest on, and every within-source pair) and the HTML page (``index.html`` with
``study.png``: within-site and within-source AUCs and the audit's occlusion AUCs per arm)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import __version__
from ..files import atomic_write, write_json
from ..metrics.bootstrap import finite, format_ci
from .planning import STUDY_FILE, StudyConfig
from .summary import pair_key, reference_of, signed_ci


def _cell(f: dict | None) -> str:
    if not f:
        return "—"
    sd = finite(f.get("sd_over_seeds"))
    return format_ci(f) + (f" ±{sd:.3f}" if sd is not None and finite(f.get("value")) is not None else "")


def _spread_cell(s: dict | None) -> str:
    if not s or finite(s["mean"]) is None:
        return "—"
    sd = finite(s["sd_over_seeds"])
    return f"{s['mean']:.3f}" + (f" ±{sd:.3f}" if sd is not None else "")


def _verdicts(vs: list[str]) -> str:
    from collections import Counter

    c = Counter(vs)
    return ", ".join(f"{v} x{k}" if k > 1 else v for v, k in c.items())


def summary_rows(summary: dict) -> tuple[list[str], list[list[str]]]:
    """The study's one table: a row per variant, the reference (the baseline) first."""
    positive, reference = summary["classes"][-1], reference_of(summary)
    header = [
        "variant",
        "seeds",
        "accuracy",
        f"{positive} sensitivity",
        f"{positive} PPV",
        *site_header(summary),
        "within-source AUC",
        f"vs {reference}",
        f"within-source {positive} AUC",
        "occlusion AUC: lungs hidden / border only",
        "audit: within / occlusion / attention",
    ]
    loso = any("loso_external_balanced_accuracy" in v["audit"] for v in summary["variants"].values())
    if loso:
        header.append("held-out source: balanced accuracy (drop from the others' test split)")
    rows = []
    for n, v in summary["variants"].items():
        f, a = v["figures"], v["audit"]
        verdicts = " / ".join(
            _verdicts(a["verdicts"].get(t, ["—"])) for t in ("within_source", "occlusion", "attention_inside_lungs")
        )
        row = [
            n,
            str(len(v["seeds"])),
            _cell(f["accuracy"]),
            _cell(f.get(f"{positive}.sensitivity")),
            _cell(f.get(f"{positive}.ppv")),
            *site_cells(summary, n, f),
            _cell(f["within.macro"]),
            signed_ci(f["within.macro"]["difference_from_baseline"]) if n != reference else "",
            _cell(f["within.covid"]),
            f"{_spread_cell(a.get('occlusion_auc_lungs'))} / {_spread_cell(a.get('occlusion_auc_border'))}",
            verdicts,
        ]
        if loso:
            ext, drop = a.get("loso_external_balanced_accuracy") or {}, a.get("loso_drop") or {}
            row.append(
                "; ".join(f"{s} {_spread_cell(x)} (drop {_spread_cell(drop.get(s))})" for s, x in ext.items()) or "—"
            )
        rows.append(row)
    return header, rows


def site_header(summary: dict) -> list[str]:
    """The within-site columns of the table (none for a study without sites): judged first."""
    if not summary.get("within_site"):
        return []
    positive = summary["classes"][-1]
    return [
        "within-site AUC (pooled)",
        f"vs {reference_of(summary)}",
        f"within-site {positive} AUC",
        "within site and view",
        "view alone",
    ]


def site_cells(summary: dict, n: str, f: dict) -> list[str]:
    if not summary.get("within_site"):
        return []
    diff = signed_ci(f["site.all"]["difference_from_baseline"]) if n != reference_of(summary) else ""
    return [_cell(f["site.all"]), diff, _cell(f["site.covid"]), _cell(f["site_view.all"]), _cell(f["view_alone.all"])]


def site_count_rows(summary: dict) -> tuple[list[str], list[list[str]]]:
    """What each pooled within-site figure rests on: image pairs (all class pairs; with COVID-19; per class
    pair) and strata; the same images in every arm."""
    ws = summary["within_site"]
    pairs = list(next(iter(ws["image_pairs"].values()))["by_pair"]) if ws["image_pairs"] else []
    header = ["figure", "image pairs: all", f"with {summary['classes'][-1]}", *pairs, "strata"]
    rows = [
        [ws["figures"][name], str(c["all"]), str(c["covid"]), *(str(c["by_pair"][p]) for p in pairs), str(c["strata"])]
        for name, c in ws["image_pairs"].items()
    ]
    return header, rows


def site_note(summary: dict) -> str:
    ws = summary["within_site"]
    held = sum(1 for p in ws["sites"] if p["counts"])
    return (
        f"Pairs of images taken at one site (a hospital within a source); {ws['unknown_site']['images']} images of "
        f"unknown site and {ws['unknown_view']['images']} of unknown view take no part (counted). {held} "
        "(site, class pair) cells hold both classes. Intervals: the patient bootstrap of the whole table."
        + (f" {ws['note']}" if ws.get("note") else "")
    )


def pair_rows(summary: dict) -> tuple[list[str], list[list[str]]]:
    """Every within-source pair, a row per variant, with its paired difference from the reference (the baseline)."""
    reference = reference_of(summary)
    header = ["variant", "source", "pair", "images", "AUC (95 % CI) ±SD over seeds", f"vs {reference}"]
    rows = []
    for p in summary["pairs"]:
        k = pair_key(p)
        counts = " / ".join(str(p["counts"][c]["images"]) for c in p["classes"])
        for n, v in summary["variants"].items():
            f = v["figures"][k]
            diff = signed_ci(f["difference_from_baseline"]) if n != reference else ""
            rows.append([n, p["source"], " vs ".join(p["classes"]), counts, _cell(f), diff])
    return header, rows


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    line = lambda cells: "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"  # noqa: E731
    return "\n".join([line(header), line(["---"] * len(header)), *map(line, rows)])


def plot_study(summary: dict):
    """Within-source AUC (seed mean with its interval, each seed a dot) and the occlusion AUCs with the lungs
    hidden and with only the border kept (each seed a mark), per variant, beside chance and the baseline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary["variants"])
    x = np.arange(len(names))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(max(8, 1.4 * len(names) + 4), 4.4), dpi=110)
    positive = summary["classes"][-1]
    keys = [
        ("within.macro", "#1f77b4", -0.12, "within source: all pairs"),
        ("within.covid", "#d62728", 0.12, f"within source: pairs with {positive}"),
    ]
    if summary.get("within_site"):  # judged first: a source is not a hospital
        keys = [
            ("site.all", "#9467bd", -0.27, "within site (pooled): all pairs"),
            ("site.covid", "#8c564b", 0.27, f"within site (pooled): pairs with {positive}"),
            *keys,
        ]
    for key, color, shift, label in keys:
        for i, n in enumerate(names):
            f = summary["variants"][n]["figures"][key]
            if f["value"] is None or f["value"] != f["value"]:
                continue
            lo, hi = f["ci95"] or (f["value"], f["value"])
            ax1.errorbar(
                i + shift,
                f["value"],
                yerr=[[f["value"] - lo], [hi - f["value"]]],
                fmt="o",
                color=color,
                capsize=4,
                label=label if i == 0 else None,
            )
            seeds = [s for s in f["seeds"] if s == s]
            ax1.scatter(np.full(len(seeds), i + shift + 0.06), seeds, s=10, color=color, alpha=0.5)
        base = summary["variants"][reference_of(summary)]["figures"][key]["value"]
        if base == base and base is not None:
            ax1.axhline(base, color=color, ls=":", lw=1)
    ax1.axhline(0.5, color="grey", ls="--", lw=1)
    ax1.set_title(
        ("Within-site and within" if summary.get("within_site") else "Within")
        + "-source pairwise AUC\n(mean over seeds, 95 % CI; dots: seeds)",
        fontsize=10,
    )
    ax1.set_ylabel("AUC")
    ax1.set_ylim(0, 1.02)
    ax1.legend(loc="lower right", fontsize=8)
    _plot_occlusion(ax2, summary, names)
    ax2.legend(loc="lower right", fontsize=8)
    ax2.set_ylim(0.3, 1.02)
    for ax in (ax1, ax2):
        ax.set_xticks(x, names, rotation=20)
        ax.set_xlim(-0.6, len(names) - 0.4)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def _plot_occlusion(ax, summary: dict, names: list[str]) -> None:
    """The audit's occlusion AUCs per variant (each seed a mark, the mean a bar) against chance and the
    warning and fail bands."""
    from ..audit.verdicts import OCCLUSION_FAIL, OCCLUSION_WARN

    for mode, marker, shift, label in (("lungs", "o", -0.1, "lungs hidden"), ("border", "^", 0.1, "border only")):
        for i, n in enumerate(names):
            occ = summary["variants"][n]["audit"].get(f"occlusion_auc_{mode}")
            if occ:
                vals = [v for v in occ["seeds"] if v is not None]
                ax.scatter(
                    np.full(len(vals), i + shift),
                    vals,
                    color="#2ca02c",
                    marker=marker,
                    s=18,
                    label=label if i == 0 else None,
                )
                ax.plot([i + shift - 0.1, i + shift + 0.1], [occ["mean"]] * 2, color="#2ca02c", lw=2)
    ax.axhline(0.5, color="grey", ls="--", lw=1)
    ax.axhspan(0.5 + OCCLUSION_FAIL, 1.0, color="#d62728", alpha=0.08, lw=0)
    ax.axhspan(0.5 + OCCLUSION_WARN, 0.5 + OCCLUSION_FAIL, color="#ff7f0e", alpha=0.08, lw=0)
    ax.set_title(
        "Audit, occlusion: macro AUC with the lungs hidden or only the border\n"
        "(marks: seeds; the higher decides; shaded: warning, fail)",
        fontsize=10,
    )


def write_outputs(cfg: StudyConfig, out: dict) -> None:
    """study.json, table.md and the HTML page (index.html with study.png)."""
    from ..report import html_table, write_page

    folder = Path(cfg.out)
    write_json(folder / STUDY_FILE, out)
    s = out["summary"]
    if s is None:
        return
    title, reference = cfg.design.title, reference_of(s)
    head, rows = summary_rows(s)
    phead, prows = pair_rows(s)
    note = (
        (f"Out of fold ({cfg.folds} folds by patient)" if cfg.folds else f"The {cfg.split} split")
        + f": {s['n']} images of {s['n_patients']} patients. Cells: the mean over seeds, its 95 % interval "
        f'from {cfg.resamples} bootstrap resamples of patients, ±SD over seeds. "vs {reference}": the paired '
        "difference of the figure to its left, with its interval."
    )
    text = "\n\n".join(
        [
            f"# {title}",
            note,
            markdown_table(head, rows),
            *(["## Within sites", site_note(s), markdown_table(*site_count_rows(s))] if s.get("within_site") else []),
            "## Within-source pairs",
            markdown_table(phead, prows) if prows else s["within_source_note"] or "",
            "## Findings",
            "\n".join(f"- {f}" for f in s["findings"]),
        ]
    )
    atomic_write(folder / "table.md", text + "\n")
    about = "".join(f"<li><b>{n}</b>: {v['about']}</li>" for n, v in s["variants"].items())
    write_page(
        folder,
        title,
        f"<p>{note}</p>"
        + html_table(head, rows, id="summary")
        + "<ul>"
        + "".join(f"<li>{f}</li>" for f in s["findings"])
        + "</ul>",
        figures=[
            (
                "study.png",
                plot_study(s),
                "Left: within-site (pooled, where the data has sites) and within-source pairwise AUC, the figures "
                "a hospital or source shortcut cannot inflate (dotted: the "
                f"{reference}; "
                "dashed: chance). Right: the audit's macro AUC with the lungs hidden and with only the border kept; "
                "the higher of the two decides the occlusion verdict; shaded: warning and fail.",
                "study-plot",
            )
        ],
        context={
            "data": cfg.data,
            "split": cfg.split,
            "seeds": str(cfg.seeds),
            "epochs": str(cfg.epochs),
            "train options": " ".join(cfg.train_options) or "—",
            "version": __version__,
        },
        after=[
            *(
                [
                    f"<section><h2>Within sites</h2><p>{site_note(s)}</p>"
                    + html_table(*site_count_rows(s), id="sites")
                    + "</section>"
                ]
                if s.get("within_site")
                else []
            ),
            "<section><h2>Within-source pairs</h2>" + html_table(phead, prows, id="pairs") + "</section>",
            f"<section><h2>Variants</h2><ul>{about}</ul></section>",
        ],
    )
