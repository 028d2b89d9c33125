"""What several commands share: plain-text tables, estimates with their 95 % CIs, the metrics of a
classification or a severity evaluation, and the task a checkpoint was trained for."""

from __future__ import annotations


def table(header: list[str], rows: list[list[str]]) -> str:
    """Left-aligned columns under a header and a rule of dashes."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def ci(entry: dict) -> str:
    """``0.912 (0.871–0.944)`` from ``{"value": …, "ci95": […]}``; ``—`` for an undefined value."""
    v, ci95 = entry["value"], entry["ci95"]
    if v is None or v != v:
        return "—"
    return f"{v:.3f}" + (f" ({ci95[0]:.3f}–{ci95[1]:.3f})" if ci95 else "")


def print_metrics(m: dict) -> None:
    """A classification evaluation: accuracy, per-class table, confusion matrix, per-source lines."""
    classes = m["confusion_matrix"]["labels"]
    print(f"{m['n']} images of {m['n_patients']} patients; 95 % CIs from {m['bootstrap']['resamples']} bootstrap "
          f"resamples of patients")
    print(f"accuracy {ci(m['accuracy'])}   ECE {m['ece']:.3f}"
          + (f"   temperature {m['temperature']:.3f}" if m.get("temperature") else ""))
    keys = ("sensitivity", "ppv", "specificity", "f1", "auc")
    rows = [[c, *(ci(m["per_class"][c][k]) for k in keys)] for c in classes]
    rows.append(["macro", *(ci(m["macro"][k]) for k in keys)])
    print(table(["class", "sensitivity", "PPV", "specificity", "F1", "AUC"], rows))
    print("confusion matrix (rows: truth, columns: prediction)")
    print(table(["", *classes], [[c, *map(str, row)] for c, row in zip(classes, m["confusion_matrix"]["matrix"])]))
    for source, sm in (m.get("per_source") or {}).items():
        print(f"source {source}: {sm['n']} images, accuracy {ci(sm['accuracy'])}, "
              + ", ".join(f"{c} sensitivity {ci(sm['per_class'][c]['sensitivity'])}" for c in classes))


def print_severity(m: dict) -> None:
    """A severity evaluation: MAE, RMSE, R² and Spearman of both extent scores."""
    from ..severity import SEVERITY_METRICS

    print(table(["score (0-8)", "MAE", "RMSE", "R²", "Spearman"],
                [[f"{s} extent", *(ci(m[s][k]) for k in SEVERITY_METRICS)] for s in ("geographic", "opacity")]))


def checkpoint_task(path: str) -> str:
    """The task a checkpoint was trained for (classification, severity or risk)."""
    from ..checkpoint import read_checkpoint

    return read_checkpoint(path).get("task", "classification")
