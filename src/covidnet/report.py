"""An evaluation report a person can read: one self-contained ``index.html`` with PNG figures beside it.

It draws what it is given (the metrics the evaluation computed, the labels and probabilities they came
from, the most confident errors) and computes nothing it could disagree with, except the curves
themselves. Every string from the data is HTML-escaped; every file is written to a temporary name and
renamed, so a reader never sees half a report. Matplotlib is used through ``Figure`` objects only, never
pyplot, so the global backend and open-figure list of the caller are left as they were.
"""

from __future__ import annotations

import html
import io
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from . import DISCLAIMER
from .files import atomic_write, jsonable, write_json
from .metrics.bootstrap import DASH, finite, format_ci, format_value
from .metrics.calibration import reliability_bins

METRICS = (
    ("sensitivity", "Sensitivity"),
    ("ppv", "PPV"),
    ("npv", "NPV"),
    ("specificity", "Specificity"),
    ("f1", "F1"),
    ("auc", "AUC"),
)
DPI = 110


# --------------------------------------------------------------------------------------------- files


def _save(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    fig.clear()  # Figure objects are not in pyplot's registry; clearing frees the artists now
    atomic_write(path, buf.getvalue())


# ------------------------------------------------------------------------------------------ numbers


def _mpl(s) -> str:
    """Text for matplotlib: a ``$`` in a file name would otherwise start mathtext (and may fail to parse)."""
    return str(s).replace("$", r"\$")


def _short(s: str, n: int) -> str:
    """Ellipsis in the middle: file names differ at the start (patient) and at the end (view, extension)."""
    return s if len(s) <= n else s[: (n - 1) // 2] + "…" + s[len(s) - (n - 1 - (n - 1) // 2) :]


def _confusion(metrics: dict, y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str]):
    """The evaluation's confusion matrix when it gave one, else counted here from the arg-max."""
    cm = metrics.get("confusion_matrix") or {}
    if cm.get("matrix") is not None:
        return list(cm.get("labels") or classes), np.asarray(cm["matrix"], dtype=np.int64)
    k = len(classes)
    pred = probs.argmax(1) if len(probs) else np.zeros(0, int)
    return list(classes), np.bincount(y_true * k + pred, minlength=k * k).reshape(k, k)


# ---------------------------------------------------------------------------------------- figures


def _figure(w: float, h: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), dpi=DPI, layout="constrained")


def plot_confusion(labels: Sequence[str], matrix: np.ndarray):
    """Counts with row-normalised percentages; colour is the row share, so rare classes read as well as common ones."""
    k = len(labels)
    rows = matrix.sum(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(rows > 0, matrix / np.maximum(rows, 1), np.nan)
    side = max(3.8, 1.0 * k + 2.3)
    fig = _figure(side + 0.9, side)
    ax = fig.add_subplot()
    im = ax.imshow(np.nan_to_num(share), cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            pct = DASH if np.isnan(share[i, j]) else f"{100 * share[i, j]:.1f} %"
            dark = not np.isnan(share[i, j]) and share[i, j] > 0.55
            ax.text(
                j,
                i,
                f"{matrix[i, j]:d}\n{pct}",
                ha="center",
                va="center",
                fontsize=11 if k <= 4 else 9,
                color="white" if dark else "#1a1a1a",
            )
    ticks = [_mpl(c) for c in labels]
    crowded = k > 3 or max(map(len, ticks), default=0) > 12
    ax.set_xticks(range(k), ticks, **(dict(rotation=30, ha="right", rotation_mode="anchor") if crowded else {}))
    ax.set_yticks(range(k), ticks, rotation=90 if k <= 3 else 0, va="center")
    ax.set_xlabel("prediction", fontsize=11)
    ax.set_ylabel("truth", fontsize=11)
    ax.set_title(f"Confusion matrix (n = {int(matrix.sum())})", fontsize=12)
    ax.tick_params(length=0)
    fig.colorbar(im, ax=ax, shrink=0.8, label="share of the true class")
    return fig


def plot_roc(y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str]):
    """One-vs-rest ROC per class; a class without both positives and negatives gets a legend line saying why not."""
    from sklearn.metrics import auc, roc_curve

    fig = _figure(5.6, 5.2)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], ls="--", lw=1, color="0.6", label="chance")
    for k, c in enumerate(classes):
        pos = y_true == k
        color = f"C{k}"
        if not pos.any() or pos.all():
            why = "absent from the data" if not pos.any() else "the only class present"
            ax.plot([], [], color=color, ls=":", label=f"{_mpl(c)}: no curve ({why})")
            continue
        fpr, tpr, _ = roc_curve(pos, probs[:, k])
        ax.plot(fpr, tpr, lw=2, color=color, label=f"{_mpl(c)} (AUC {auc(fpr, tpr):.3f})")
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), aspect="equal")
    ax.set_xlabel("false positive rate (1 − specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    ax.set_title("ROC, one class against the rest", fontsize=12)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=9)
    return fig


def plot_reliability(y_true: np.ndarray, probs: np.ndarray, ece: float | None = None, n_bins: int = 10):
    """Accuracy against top-class confidence, bin counts underneath; ECE is the evaluation's when given."""
    count, acc, mean_conf, own_ece = reliability_bins(y_true, probs, n_bins)
    ece = own_ece if finite(ece) is None else ece
    edges = np.linspace(0, 1, n_bins + 1)
    centre, width = (edges[:-1] + edges[1:]) / 2, 1 / n_bins
    fig = _figure(5.6, 6.0)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    full = count > 0
    if full.any():
        top.bar(centre[full], acc[full], width=width * 0.95, color="C0", edgecolor="C0", alpha=0.8, label="accuracy")
        top.bar(
            centre[full],
            np.abs(mean_conf - acc)[full],
            bottom=np.minimum(acc, mean_conf)[full],
            width=width * 0.95,
            color="none",
            edgecolor="C3",
            hatch="//",
            lw=0,
            label="gap to mean confidence",
        )
    else:
        top.text(0.5, 0.6, "no predictions", ha="center", va="center", color="0.4", transform=top.transAxes)
    top.plot([0, 1], [0, 1], ls="--", color="0.4", lw=1, label="perfect calibration")
    top.set(xlim=(0, 1), ylim=(0, 1))
    top.set_ylabel("accuracy")
    top.set_title(f"Reliability of the top-class confidence (ECE {format_value(ece)})", fontsize=12)
    top.legend(loc="upper left", fontsize=9)
    top.grid(alpha=0.3)
    bottom.bar(centre, count, width=width * 0.95, color="0.55")
    for x, n in zip(centre, count):
        if n:
            bottom.text(x, n, str(int(n)), ha="center", va="bottom", fontsize=8)
    bottom.set_ylim(0, max(1, count.max()) * 1.3)
    bottom.set_xlabel("confidence (probability of the predicted class)")
    bottom.set_ylabel("images")
    bottom.set_xticks(edges[::2])
    return fig


def plot_errors(errors: Sequence[dict], cols: int = 4):
    """Thumbnails (the heat-map overlay when there is one), captioned with name, truth, prediction, confidence."""
    n = len(errors)
    cols = min(cols, n)
    rows = -(-n // cols)
    fig = _figure(2.7 * cols, 3.25 * rows)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, e in zip(axes, errors):
        overlay = e.get("overlay")
        if overlay is not None:
            ax.imshow(np.asarray(overlay))
        else:
            ax.imshow(np.asarray(e["image"]), cmap="gray", vmin=0, vmax=255)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(_mpl(_short(str(e.get("name", "")), 30)), fontsize=8.5)
        p = f" (p = {format_value(e.get('confidence'), 2)})" if "confidence" in e else ""  # a regression has none
        ax.set_xlabel(f"truth: {_mpl(e.get('true', ''))}\npredicted: {_mpl(e.get('pred', ''))}{p}", fontsize=8.5)
    for ax in axes[n:]:
        ax.set_axis_off()
    return fig


def plot_severity_scatter(y_true: np.ndarray, y_pred: np.ndarray, names: Sequence[str], top: float = 8.0):
    """One panel per score: predicted against annotated, the diagonal, and R² in the title."""
    fig = _figure(4.2 * len(names), 4.0)
    axes = np.atleast_1d(fig.subplots(1, len(names)))
    for k, (ax, name) in enumerate(zip(axes, names)):
        t, p = np.asarray(y_true)[:, k], np.asarray(y_pred)[:, k]
        ax.plot([0, top], [0, top], color="#999", lw=1, ls="--")
        ax.scatter(t, p, s=14, alpha=0.7, color="#1f5fa8", edgecolor="none")
        ss = float(((t - t.mean()) ** 2).sum()) if len(t) else 0.0
        r2 = 1 - float(((t - p) ** 2).sum()) / ss if ss > 0 else float("nan")
        ax.set(
            xlim=(-0.2, top + 0.2),
            ylim=(-0.2, top + 0.2),
            aspect="equal",
            xlabel=f"annotated {name} extent",
            ylabel=f"predicted {name} extent",
            title=f"{name} extent (R² {format_value(r2, 2)}, n = {len(t)})",
        )
        ax.grid(alpha=0.3)
    return fig


# ------------------------------------------------------------------------------------------- HTML

CSS = """
:root { color-scheme: light; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", "DejaVu Sans", sans-serif; color: #1d1d1f;
       margin: 0 auto; max-width: 1180px; padding: 0 24px 48px; }
h1 { font-size: 1.55em; margin: 0.5em 0 0.3em; }
h2 { font-size: 1.2em; margin: 1.6em 0 0.5em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
h3 { font-size: 1.02em; margin: 1.2em 0 0.4em; }
.disclaimer { background: #fff3cd; border: 1px solid #e0b100; border-left: 6px solid #c98a00; padding: 8px 14px;
              margin: 16px 0 0; font-weight: 600; }
table { border-collapse: collapse; margin: 0.3em 0; }
th, td { padding: 4px 12px; border-bottom: 1px solid #e4e4e4; text-align: left; vertical-align: top; }
thead th { border-bottom: 2px solid #bbb; background: #f6f6f6; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.context { font-size: 0.88em; color: #444; }
table.context th { font-weight: 600; padding-left: 0; }
table.context td { overflow-wrap: anywhere; max-width: 520px; }
.top { display: flex; flex-wrap: wrap; gap: 0 56px; align-items: flex-start; }
.top > section { flex: 0 1 auto; min-width: 0; }
.note { color: #555; font-size: 0.9em; margin: 0.3em 0; }
.figures { display: flex; flex-wrap: wrap; gap: 16px; }
figure { margin: 0; flex: 1 1 420px; max-width: 560px; }
figure.wide { max-width: none; }
figure.wide img { width: auto; max-width: 100%; }
figure img { width: 100%; height: auto; border: 1px solid #e4e4e4; }
figcaption { font-size: 0.88em; color: #555; }
details { margin: 0.4em 0; }
summary { cursor: pointer; font-weight: 600; }
footer { margin-top: 3em; font-size: 0.82em; color: #777; }
"""


def _e(s) -> str:
    return html.escape(str(s), quote=True)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], id: str | None = None, numeric_from: int = 1) -> str:
    """Cells arrive escaped; columns from ``numeric_from`` on are right-aligned numbers."""
    attrs = f' id="{id}"' if id else ""
    th = "".join(f'<th{" class=num" if i >= numeric_from else ""} scope="col">{h}</th>' for i, h in enumerate(header))
    body = "".join(
        "<tr>"
        + "".join(
            f'<th scope="row">{c}</th>' if i == 0 else f"<td{' class=num' if i >= numeric_from else ''}>{c}</td>"
            for i, c in enumerate(r)
        )
        + "</tr>\n"
        for r in rows
    )
    return f"<table{attrs}>\n<thead><tr>{th}</tr></thead>\n<tbody>\n{body}</tbody>\n</table>"


def html_table(header: Sequence[str], rows: Sequence[Sequence[str]], id: str | None = None) -> str:
    """A table as every page here writes one, for pages written elsewhere (``covidnet lungs eval``): the
    cells are escaped here; the first column heads its row, the others are right-aligned numbers."""
    return _table([_e(h) for h in header], [[_e(c) for c in r] for r in rows], id=id)


def _support(m: dict, classes: Sequence[str]) -> list[str]:
    cm = m.get("confusion_matrix") or {}
    if cm.get("matrix") is None:
        return [DASH] * len(classes)
    labels = list(cm.get("labels") or classes)
    rows = dict(zip(labels, np.asarray(cm["matrix"]).sum(1).tolist()))
    return [str(rows[c]) if c in rows else DASH for c in classes]


def _summary_rows(m: dict) -> list[list[str]]:
    macro = m.get("macro") or {}
    n, p = m.get("n"), m.get("n_patients")
    return [
        ["Images", _e(n) if n is not None else DASH],
        ["Patients", _e(p) if p is not None else DASH],
        ["Accuracy", _e(format_ci(m.get("accuracy")))],
        *[
            [f"Macro {label if label.isupper() or label == 'F1' else label.lower()}", _e(format_ci(macro.get(key)))]
            for key, label in METRICS
        ],
        ["ECE (10 bins)", _e(format_value(m.get("ece")))],
        ["Temperature", _e(format_value(m.get("temperature"), 3))],
    ]


def _per_class_table(m: dict, classes: Sequence[str], id: str | None = None, support: list[str] | None = None) -> str:
    per = m.get("per_class") or {}
    support = support or _support(m, classes)
    rows = [
        [_e(c), _e(s), *(_e(format_ci((per.get(c) or {}).get(key))) for key, _ in METRICS)]
        for c, s in zip(classes, support)
    ]
    return _table(["class", "images", *(label for _, label in METRICS)], rows, id=id)


def _bootstrap_note(m: dict) -> str:
    b = m.get("bootstrap") or {}
    if not b:
        return '<p class="note">In brackets: 95 % confidence intervals.</p>'
    unit = b.get("unit", "image")
    return (
        f'<p class="note">In brackets: 95 % confidence intervals, bootstrap over {_e(unit)}s '
        f"({_e(b.get('resamples', DASH))} resamples).</p>"
    )


def _per_source_html(per_source: dict, classes: Sequence[str]) -> str:
    rows, details = [], []
    for i, (src, m) in enumerate(per_source.items()):
        m = m or {}
        macro = m.get("macro") or {}
        rows.append(
            [
                _e(src),
                _e(m.get("n", DASH)),
                _e(m.get("n_patients", DASH)),
                _e(format_ci(m.get("accuracy"))),
                _e(format_ci(macro.get("sensitivity"))),
                _e(format_ci(macro.get("auc"))),
                _e(format_value(m.get("ece"))),
            ]
        )
        details.append(
            f"<details><summary>{_e(src)}: per class</summary>\n"
            f"{_per_class_table(m, classes, id=f'per-class-source-{i}')}\n</details>"
        )
    head = ["source", "images", "patients", "accuracy", "macro sensitivity", "macro AUC", "ECE"]
    return _table(head, rows, id="per-source") + "\n" + "\n".join(details)


def _pair_row(p: dict, shown: str) -> list[str]:
    """A row of the within-source table: source, pair, ``shown``, images and patients of a / of b."""
    a, b = p["classes"]
    counts = [" / ".join(str(p["counts"][c][key]) for c in (a, b)) for key in ("images", "patients")]
    return [_e(p["source"]), _e(f"{a} vs {b}"), _e(shown), *counts]


def _within_source_html(ws: dict) -> str:
    """The pairwise AUC of each class pair inside each source (``within_source_auc``), its counts, the
    macro average of a source's pairs, the skipped pairs; or the note that there is no such figure."""
    head = (
        '<section id="within-source"><h2>Within source</h2>\n<p class="note">Each row compares two classes '
        "among the images of one source, where the source cannot give the class away: it is the figure a "
        "hospital, scanner or marker shortcut cannot inflate.</p>\n"
    )
    if not ws.get("pairs"):
        return head + f'<p id="within-source-note">{_e(ws.get("note") or "")}</p>\n</section>'
    rows = [_pair_row(p, format_ci(p["auc"])) for p in ws["pairs"]]
    rows += [
        [_e(src), _e(f"macro over {s['pairs']} pairs"), _e(format_ci(s["macro_auc"])), DASH, DASH]
        for src, s in (ws.get("per_source") or {}).items()
        if s["pairs"] > 1
    ]
    rows += [_pair_row(p, f"skipped: {p['reason']}") for p in ws.get("skipped") or ()]
    header = ["source", "classes", "pairwise AUC (95 % CI)", "images", "patients"]
    return (
        head
        + _table(header, rows, id="within-source-table", numeric_from=2)
        + '\n<p class="note">Pairwise AUC of classes a and b: among the source\'s images of a or b, the ROC-AUC '
        "of P(a) / (P(a) + P(b)); bootstrap over the source's patients. Images and patients: of a / of b. A "
        f"pair needs at least {_e(ws.get('min_images_per_class', DASH))} images of each class.</p>\n</section>"
    )


def _errors_html(errors: Sequence[dict]) -> str:
    if not errors:
        return '<p id="no-errors">No misclassified images to show.</p>'
    rows = [
        [
            str(i + 1),
            _e(e.get("name", "")),
            _e(e.get("true", "")),
            _e(e.get("pred", "")),
            _e(format_value(e.get("confidence"), 3)),
        ]
        for i, e in enumerate(errors)
    ]
    return (
        '<figure class="wide"><img id="errors" src="errors.png" alt="Most confident errors: thumbnails with '
        'name, truth, prediction and confidence"><figcaption>The heat map over an image, where there is one, '
        "shows the regions that drove the prediction.</figcaption></figure>\n"
        "<details><summary>The same errors as a list</summary>\n"
        + _table(["#", "image", "truth", "prediction", "confidence"], rows, id="errors-table", numeric_from=4)
        + "\n</details>"
    )


def _context_html(context: dict | None) -> str:
    rows = "".join(f'<tr><th scope="row">{_e(k)}</th><td>{_e(v)}</td></tr>' for k, v in (context or {}).items())
    return f'<section><h2>Run</h2>\n<table id="context" class="context">{rows}</table></section>'


def _figures_html(figures: Sequence[tuple[str, object, str, str | None]]) -> str:
    figs = ""
    for name, _, caption, fid in figures:
        ident = f' id="{_e(fid)}"' if fid else ""
        figs += f'<figure><img{ident} src="{_e(name)}" alt="{_e(caption)}">'
        figs += f"<figcaption>{_e(caption)}</figcaption></figure>\n"
    return f'<section>\n<h2>Figures</h2>\n<div class="figures">\n{figs}</div>\n</section>'


def write_page(
    out_dir: str | Path,
    title: str,
    summary_html: str,
    figures: Sequence[tuple[str, object, str, str | None]] = (),
    context: dict | None = None,
    before: Sequence[str] = (),
    after: Sequence[str] = (),
    errors: Sequence[dict] | None = None,
) -> Path:
    """THE report writer (evaluation of every task, the audit): ``out_dir/index.html`` under the
    disclaimer, with a summary, the run's context, ``figures`` (``(file name, matplotlib Figure or PNG
    bytes, caption, element id)``), HTML sections ``before`` and ``after`` the figures and, when given,
    images with heat maps (``errors``, as ``plot_errors`` takes them; written as ``errors.png``).
    Figures first, page last, each atomically, so a page never points at a figure that is not there
    yet; an earlier report's ``errors.png`` that this page no longer shows is removed."""
    from . import __version__

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, fig, _, _ in figures:
        if isinstance(fig, bytes):
            atomic_write(out / name, fig)
        else:
            _save(fig, out / name)
    if errors:
        _save(plot_errors(errors), out / "errors.png")
    else:
        (out / "errors.png").unlink(missing_ok=True)
    page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title>
<style>{CSS}</style>
</head>
<body>
<p class="disclaimer" id="disclaimer" role="note">{DISCLAIMER}</p>
<h1>{_e(title)}</h1>
<div class="top">
<section>
<h2>Summary</h2>
{summary_html}
</section>
{_context_html(context) if context else ""}
</div>
{"".join(before)}
{_figures_html(figures) if figures else ""}
{"".join(after)}
<footer>{DISCLAIMER} Written by covidnet {_e(__version__)}.</footer>
</body>
</html>
"""
    index = out / "index.html"
    atomic_write(index, page.encode("utf-8"))
    return index


CLASSIFICATION_FIGURES = (
    (
        "confusion_matrix.png",
        "Rows: truth; columns: prediction. Each cell: count and share of its row.",
        "confusion-matrix",
    ),
    ("roc.png", "One-vs-rest ROC curves from the predicted probabilities.", "roc"),
    (
        "reliability.png",
        "Accuracy of the predictions in each confidence bin; bars on the diagonal are perfectly "
        "calibrated. Underneath: images per bin.",
        "reliability",
    ),
)


def write_report(
    out_dir: str | Path,
    metrics: dict,
    y_true: np.ndarray,
    probs: np.ndarray,
    classes: Sequence[str],
    errors: Sequence[dict] = (),
    title: str = "covidnet evaluation",
    context: dict | None = None,
) -> Path:
    """A classification evaluation: summary, per-class table, within-source pairwise AUCs, confusion
    matrix, ROC and reliability figures, per source, the most confident errors. Returns the path of
    ``index.html``; files of an earlier report are replaced, other files in the folder are left alone."""
    y_true = np.asarray(y_true).astype(np.int64, copy=False).reshape(-1)
    probs = np.asarray(probs, dtype=np.float64)
    classes = [str(c) for c in classes]
    if probs.ndim != 2 or probs.shape != (len(y_true), len(classes)):
        raise ValueError(
            f"probs has shape {probs.shape}; expected ({len(y_true)}, {len(classes)}) "
            "(one row per label, one column per class)"
        )
    if len(y_true) and (y_true.min() < 0 or y_true.max() >= len(classes)):
        raise ValueError(f"y_true holds class indices outside 0..{len(classes) - 1}")
    labels, matrix = _confusion(metrics, y_true, probs, classes)
    drawn = (
        plot_confusion(labels, matrix),
        plot_roc(y_true, probs, classes),
        plot_reliability(y_true, probs, metrics.get("ece")),
    )
    figures = [(name, fig, caption, fid) for (name, caption, fid), fig in zip(CLASSIFICATION_FIGURES, drawn)]
    per_class = (
        f"<section>\n<h2>Per class</h2>\n{_per_class_table(metrics, classes, id='per-class')}\n"
        f'{_bootstrap_note(metrics)}\n<p class="note">Sensitivity: share of a class found. PPV: share of the '
        "predictions of a class that are right. NPV: share of the images called not of a class that are not. "
        "Macro: the unweighted mean over classes. ECE: expected calibration error of the top-class "
        "confidence.</p>\n</section>"
    )
    before = [per_class] + ([_within_source_html(metrics["within_source"])] if "within_source" in metrics else [])
    per_source = metrics.get("per_source") or {}
    after = [f"<section><h2>Per source</h2>\n{_per_source_html(per_source, classes)}</section>"] if per_source else []
    after.append(f"<section>\n<h2>Most confident errors</h2>\n{_errors_html(errors)}\n</section>")
    summary = _table(["", "value (95 % CI)"], _summary_rows(metrics), id="summary")
    return write_page(out_dir, title, summary, figures, context, before, after, list(errors))


def write_task_report(
    out_dir: str | Path,
    title: str,
    table: tuple[Sequence[str], Sequence[Sequence[str]]],
    figures: Sequence[tuple[str, object, str]],
    context: dict | None = None,
    errors: Sequence[dict] = (),
) -> Path:
    """The report of a severity or risk evaluation: a summary table (``(header, rows)``, plain strings),
    figures (``(file name, matplotlib Figure, caption)``) and, optionally, images with their heat maps."""
    header, rows = table
    summary = _table([_e(h) for h in header], [[_e(c) for c in r] for r in rows], id="summary")
    shown = (
        (
            '<section><h2>Largest disagreements</h2><figure class="wide"><img id="errors" src="errors.png" '
            'alt="Images with the largest disagreement, with Grad-CAM of the first output"><figcaption>Grad-CAM of '
            "the head's first output over each image.</figcaption></figure></section>"
        )
        if errors
        else ""
    )
    return write_page(
        out_dir, title, summary, [(*f, None) for f in figures], context, after=[shown], errors=list(errors)
    )


VERDICT_COLOUR = {"ok": "#1e8449", "warning": "#b9770e", "fail": "#c0392b", "skipped": "#777"}


def plot_audit(tests: dict):
    """The audit's figures in one: the within-source pairwise AUCs (with their 95 % intervals), the source
    probes' balanced accuracies and the occlusion AUCs."""
    bars, names, errs = [], [], []
    sp, oc = tests["source_predictability"], tests["occlusion"]
    for p in (tests.get("within_source") or {}).get("pairs", ()):
        v, ci = p["auc"]["value"], p["auc"]["ci95"] or [p["auc"]["value"]] * 2
        names.append(f"within {p['source']}: {' vs '.join(p['classes'])}")
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
    fig = _figure(7, max(3.2, 1.2 + 0.3 * len(names)))
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
    ax.set_yticks(range(len(names)), [_mpl(n) for n in names])
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
        "within a source: pairwise AUC (95 % CI)\nclass: macro AUC (dashed: chance)\n"
        "source: balanced accuracy (dotted: chance)\nattention: share of Grad-CAM mass inside the lungs (95 % CI)"
    )
    return fig


def plot_attention(examples: dict, cols: int = 4):
    """A few images per source (``audit.lung_attention``'s examples): the Grad-CAM map over the image and
    the dilated lung mask's outline, captioned with the share of the map inside it."""
    sources = sorted(examples)
    cols = max(1, min(cols, max(len(v) for v in examples.values())))
    fig = _figure(2.5 * cols, 2.8 * len(sources))
    axes = np.atleast_2d(fig.subplots(len(sources), cols, squeeze=False))
    for row, src in zip(axes, sources):
        for ax, e in zip(row, examples[src]):
            ax.imshow(e["image"], cmap="gray", vmin=0, vmax=255)
            ax.imshow(e["cam"], cmap="jet", alpha=0.4, vmin=0, vmax=1)
            ax.contour(e["lungs"].astype(float), levels=[0.5], colors="white", linewidths=1.2)
            ax.set_title(_mpl(f"{src}: {e['share']:.0%} inside"), fontsize=8.5)
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
        for ax in row[len(examples[src]) :]:
            ax.set_axis_off()
    return fig


def write_audit_report(out_dir: str | Path, audit: dict, examples: dict | None = None) -> Path:
    """``audit.json`` and ``index.html``: the one-screen summary of verdicts first, then the figure, then
    each test's details and thresholds; with ``examples`` (``audit.attention_inside_lungs``), images with
    their Grad-CAM map and lung outline."""
    rows = "".join(
        f"<tr><td>{_e(s['test'])}</td><td style='color:{VERDICT_COLOUR[s['verdict']]};font-weight:bold'>"
        f"{_e(s['verdict'])}</td><td>{_e(s['reading'])}</td></tr>"
        for s in audit["summary"]
    )
    summary = (
        f'<table id="summary"><thead><tr><th>test</th><th>verdict</th><th>what it means</th></tr></thead>'
        f"<tbody>{rows}</tbody></table>"
    )
    details = "".join(
        f"<h3>{_e(v['test'])}</h3><pre>{_e(json.dumps(jsonable(v), indent=2))}</pre>" for v in audit["tests"].values()
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
