"""The report's figures: matplotlib ``Figure`` objects only, never pyplot, so the global backend and
open-figure list of the caller are left as they were; ``save_png`` writes one atomically and frees it.

Each draws what it is given (the labels and probabilities an evaluation came from, its most confident
errors) and computes nothing it could disagree with, except the curves themselves.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..files import atomic_write
from ..metrics.bootstrap import DASH, finite, format_value
from ..metrics.calibration import reliability_bins

DPI = 110


def save_png(fig, path: Path) -> None:
    """``fig`` as a PNG at ``path`` (written atomically), then cleared."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    fig.clear()  # Figure objects are not in pyplot's registry; clearing frees the artists now
    atomic_write(path, buf.getvalue())


def mpl_text(s) -> str:
    """Text for matplotlib: a ``$`` in a file name would otherwise start mathtext (and may fail to parse)."""
    return str(s).replace("$", r"\$")


def _short(s: str, n: int) -> str:
    """Ellipsis in the middle: file names differ at the start (patient) and at the end (view, extension)."""
    return s if len(s) <= n else s[: (n - 1) // 2] + "…" + s[len(s) - (n - 1 - (n - 1) // 2) :]


def figure(w: float, h: float):
    """A new ``Figure`` of ``w`` x ``h`` inches at the report's DPI, laid out by matplotlib's constrained layout."""
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), dpi=DPI, layout="constrained")


def plot_confusion(labels: Sequence[str], matrix: np.ndarray):
    """Counts with row-normalised percentages; colour is the row share, so rare classes read as well as common ones."""
    k = len(labels)
    rows = matrix.sum(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(rows > 0, matrix / np.maximum(rows, 1), np.nan)
    side = max(3.8, 1.0 * k + 2.3)
    fig = figure(side + 0.9, side)
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
    ticks = [mpl_text(c) for c in labels]
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

    fig = figure(5.6, 5.2)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], ls="--", lw=1, color="0.6", label="chance")
    for k, c in enumerate(classes):
        pos = y_true == k
        color = f"C{k}"
        if not pos.any() or pos.all():
            why = "absent from the data" if not pos.any() else "the only class present"
            ax.plot([], [], color=color, ls=":", label=f"{mpl_text(c)}: no curve ({why})")
            continue
        fpr, tpr, _ = roc_curve(pos, probs[:, k])
        ax.plot(fpr, tpr, lw=2, color=color, label=f"{mpl_text(c)} (AUC {auc(fpr, tpr):.3f})")
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
    fig = figure(5.6, 6.0)
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
    fig = figure(2.7 * cols, 3.25 * rows)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, e in zip(axes, errors):
        overlay = e.get("overlay")
        if overlay is not None:
            ax.imshow(np.asarray(overlay))
        else:
            ax.imshow(np.asarray(e["image"]), cmap="gray", vmin=0, vmax=255)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(mpl_text(_short(str(e.get("name", "")), 30)), fontsize=8.5)
        p = f" (p = {format_value(e.get('confidence'), 2)})" if "confidence" in e else ""  # a regression has none
        ax.set_xlabel(
            f"truth: {mpl_text(e.get('true', ''))}\npredicted: {mpl_text(e.get('pred', ''))}{p}", fontsize=8.5
        )
    for ax in axes[n:]:
        ax.set_axis_off()
    return fig


def plot_severity_scatter(y_true: np.ndarray, y_pred: np.ndarray, names: Sequence[str], top: float = 8.0):
    """One panel per score: predicted against annotated, the diagonal, and R² in the title."""
    fig = figure(4.2 * len(names), 4.0)
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
