"""The evaluation report a person can read: a classification evaluation (``write_report``: summary, per
class, within source, per source, figures, the most confident errors) and a severity or risk one
(``write_task_report``). It shows the metrics the evaluation computed and computes none of its own."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..metrics.bootstrap import DASH, format_ci, format_value
from ..metrics.within import pooled_rows
from .figures import plot_confusion, plot_reliability, plot_roc
from .html import escape, escaped_table, write_page

METRICS = (
    ("sensitivity", "Sensitivity"),
    ("ppv", "PPV"),
    ("npv", "NPV"),
    ("specificity", "Specificity"),
    ("f1", "F1"),
    ("auc", "AUC"),
)


def _confusion(metrics: dict, y_true: np.ndarray, probs: np.ndarray, classes: Sequence[str]):
    """The evaluation's confusion matrix when it gave one, else counted here from the arg-max."""
    cm = metrics.get("confusion_matrix") or {}
    if cm.get("matrix") is not None:
        return list(cm.get("labels") or classes), np.asarray(cm["matrix"], dtype=np.int64)
    k = len(classes)
    pred = probs.argmax(1) if len(probs) else np.zeros(0, int)
    return list(classes), np.bincount(y_true * k + pred, minlength=k * k).reshape(k, k)


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
        ["Images", escape(n) if n is not None else DASH],
        ["Patients", escape(p) if p is not None else DASH],
        ["Accuracy", escape(format_ci(m.get("accuracy")))],
        *[
            [f"Macro {label if label.isupper() or label == 'F1' else label.lower()}", escape(format_ci(macro.get(key)))]
            for key, label in METRICS
        ],
        ["ECE (10 bins)", escape(format_value(m.get("ece")))],
        ["Temperature", escape(format_value(m.get("temperature"), 3))],
    ]


def _per_class_table(m: dict, classes: Sequence[str], id: str | None = None, support: list[str] | None = None) -> str:
    per = m.get("per_class") or {}
    support = support or _support(m, classes)
    rows = [
        [escape(c), escape(s), *(escape(format_ci((per.get(c) or {}).get(key))) for key, _ in METRICS)]
        for c, s in zip(classes, support)
    ]
    return escaped_table(["class", "images", *(label for _, label in METRICS)], rows, id=id)


def _bootstrap_note(m: dict) -> str:
    b = m.get("bootstrap") or {}
    if not b:
        return '<p class="note">In brackets: 95 % confidence intervals.</p>'
    unit = b.get("unit", "image")
    return (
        f'<p class="note">In brackets: 95 % confidence intervals, bootstrap over {escape(unit)}s '
        f"({escape(b.get('resamples', DASH))} resamples).</p>"
    )


def _per_source_html(per_source: dict, classes: Sequence[str]) -> str:
    rows, details = [], []
    for i, (src, m) in enumerate(per_source.items()):
        m = m or {}
        macro = m.get("macro") or {}
        rows.append(
            [
                escape(src),
                escape(m.get("n", DASH)),
                escape(m.get("n_patients", DASH)),
                escape(format_ci(m.get("accuracy"))),
                escape(format_ci(macro.get("sensitivity"))),
                escape(format_ci(macro.get("auc"))),
                escape(format_value(m.get("ece"))),
            ]
        )
        details.append(
            f"<details><summary>{escape(src)}: per class</summary>\n"
            f"{_per_class_table(m, classes, id=f'per-class-source-{i}')}\n</details>"
        )
    head = ["source", "images", "patients", "accuracy", "macro sensitivity", "macro AUC", "ECE"]
    return escaped_table(head, rows, id="per-source") + "\n" + "\n".join(details)


def _pair_row(p: dict, shown: str) -> list[str]:
    """A row of the within-source table: source, pair, ``shown``, images and patients of a / of b."""
    a, b = p["classes"]
    counts = [" / ".join(str(p["counts"][c][key]) for c in (a, b)) for key in ("images", "patients")]
    return [escape(p["source"]), escape(f"{a} vs {b}"), escape(shown), *counts]


def _within_source_html(ws: dict) -> str:
    """The pairwise AUC of each class pair inside each source (``within_source_auc``), its counts, the
    macro average of a source's pairs, the skipped pairs; or the note that there is no such figure."""
    head = (
        '<section id="within-source"><h2>Within source</h2>\n<p class="note">Each row compares two classes '
        "among the images of one source, where the source cannot give the class away: it is the figure a "
        "hospital, scanner or marker shortcut cannot inflate.</p>\n"
    )
    if not ws.get("pairs"):
        return head + f'<p id="within-source-note">{escape(ws.get("note") or "")}</p>\n</section>'
    rows = [_pair_row(p, format_ci(p["auc"])) for p in ws["pairs"]]
    rows += [
        [escape(src), escape(f"macro over {s['pairs']} pairs"), escape(format_ci(s["macro_auc"])), DASH, DASH]
        for src, s in (ws.get("per_source") or {}).items()
        if s["pairs"] > 1
    ]
    rows += [_pair_row(p, f"skipped: {p['reason']}") for p in ws.get("skipped") or ()]
    header = ["source", "classes", "pairwise AUC (95 % CI)", "images", "patients"]
    return (
        head
        + escaped_table(header, rows, id="within-source-table", numeric_from=2)
        + '\n<p class="note">Pairwise AUC of classes a and b: among the source\'s images of a or b, the ROC-AUC '
        "of P(a) / (P(a) + P(b)); bootstrap over the source's patients. Images and patients: of a / of b. A "
        f"pair needs at least {escape(ws.get('min_images_per_class', DASH))} images of each class.</p>\n</section>"
    )


def _site_pair_row(p: dict, shown: str) -> list[str]:
    """A row of the per-site table: source, site, pair, ``shown``, images and patients of a / of b."""
    return [escape(p["source"]), *_pair_row({**p, "source": p["site"]}, shown)]


def _within_site_html(ws: dict) -> str:
    """The pooled within-site figures (``metrics.within.within_site_auc``) with their image pairs, the view-alone
    figures beside them, the pairwise AUCs per site; or the note that there is no such figure."""
    unknown = (ws.get("unknown_site") or {}).get("images", 0)
    head = (
        '<section id="within-site"><h2>Within site</h2>\n<p class="note">A source is not a hospital: these '
        "figures compare only images taken at the same site of the same source, so neither the hospital nor the "
        f"collection can order them. {escape(unknown)} images of unknown site take no part.</p>\n"
    )
    if ws.get("note"):
        return head + f'<p id="within-site-note">{escape(ws["note"])}</p>\n</section>'
    positive = ws.get("positive_class", "COVID-19")
    pooled = escaped_table(
        ["pooled AUC", "all class pairs (95 % CI)", f"pairs with {positive}", "image pairs", "strata"],
        [[escape(cell) for cell in row] for row in pooled_rows(ws)],
        id="within-site-pooled",
        numeric_from=1,
    )
    rows = [_site_pair_row(p, format_ci(p["auc"])) for p in ws.get("pairs") or ()]
    rows += [_site_pair_row(p, f"skipped: {p['reason']}") for p in ws.get("skipped") or ()]
    sites = escaped_table(
        ["source", "site", "classes", "pairwise AUC (95 % CI)", "images", "patients"],
        rows,
        id="within-site-table",
        numeric_from=3,
    )
    unknown_view = (ws.get("unknown_view") or {}).get("images", 0)
    return (
        head
        + pooled
        + '\n<p class="note">Pooled AUC: the share of correctly ordered (a, b) image pairs among all pairs taken '
        "within one site (ties count a half), of P(a) / (P(a) + P(b)); <em>within site and view</em>: pairs whose "
        "films also share the view (PA, AP, AP supine), so positioning cannot order them; <em>view alone</em>: "
        "the same share for the view itself as the score (AP for the later class of each pair): 0.5 means the "
        "view says nothing of the class within its sites, and the farther from 0.5, the more of a figure "
        f"positioning could explain ({escape(unknown_view)} images of unknown view take no part in these rows). "
        "Intervals: bootstrap over patients, resampled within their site.</p>\n" + sites + "\n</section>"
    )


def _errors_html(errors: Sequence[dict]) -> str:
    if not errors:
        return '<p id="no-errors">No misclassified images to show.</p>'
    rows = [
        [
            str(i + 1),
            escape(e.get("name", "")),
            escape(e.get("true", "")),
            escape(e.get("pred", "")),
            escape(format_value(e.get("confidence"), 3)),
        ]
        for i, e in enumerate(errors)
    ]
    return (
        '<figure class="wide"><img id="errors" src="errors.png" alt="Most confident errors: thumbnails with '
        'name, truth, prediction and confidence"><figcaption>The heat map over an image, where there is one, '
        "shows the regions that drove the prediction.</figcaption></figure>\n"
        "<details><summary>The same errors as a list</summary>\n"
        + escaped_table(["#", "image", "truth", "prediction", "confidence"], rows, id="errors-table", numeric_from=4)
        + "\n</details>"
    )


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
    before += [_within_site_html(metrics["within_site"])] if "within_site" in metrics else []
    per_source = metrics.get("per_source") or {}
    after = [f"<section><h2>Per source</h2>\n{_per_source_html(per_source, classes)}</section>"] if per_source else []
    after.append(f"<section>\n<h2>Most confident errors</h2>\n{_errors_html(errors)}\n</section>")
    summary = escaped_table(["", "value (95 % CI)"], _summary_rows(metrics), id="summary")
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
    summary = escaped_table([escape(h) for h in header], [[escape(c) for c in r] for r in rows], id="summary")
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
