"""What several commands share: plain-text tables, the terminal summary of an evaluation, and the stream of
per-image results that ``predict`` and ``lungs predict`` print."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable

from ..errors import CovidnetError


def table(header: list[str], rows: list[list[str]]) -> str:
    """Left-aligned columns under a header and a rule of dashes."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def print_evaluation(m: dict) -> None:
    """An evaluation of any task: counts, the task's headline and summary table, the confusion matrix
    where there is one, the within-source pairwise AUCs (classification), per-source lines where there
    are several sources."""
    from ..metrics.bootstrap import format_ci
    from ..tasks import task_from_meta

    task = task_from_meta(m["task_meta"])
    print(
        f"{m['task']}: {m['n']} images of {m['n_patients']} patients; 95 % CIs from {m['bootstrap']['resamples']} "
        "bootstrap resamples of patients"
    )
    if task.headline(m):
        print(task.headline(m))
    print(table(*task.summary(m)))
    if m.get("confusion_matrix"):
        cm = m["confusion_matrix"]
        print("confusion matrix (rows: truth, columns: prediction)")
        print(table(["", *cm["labels"]], [[c, *map(str, row)] for c, row in zip(cm["labels"], cm["matrix"])]))
    if "within_source" in m:
        print_within_source(m["within_source"])
    if "within_site" in m:
        print_within_site(m["within_site"])
    for source, sm in (m.get("per_source") or {}).items():
        print(
            f"source {source}: {sm['n']} images, accuracy {format_ci(sm['accuracy'])}, "
            + ", ".join(f"{c} sensitivity {format_ci(sm['per_class'][c]['sensitivity'])}" for c in sm["per_class"])
        )


def print_within_source(ws: dict) -> None:
    """The pairwise AUC of each class pair inside each source, with its counts; skipped pairs; or the note."""
    from ..metrics.bootstrap import format_ci

    print(
        "within source (pairwise AUC among one source's images of two classes: the figure the source cannot give away)"
    )
    if not ws["pairs"]:
        print(f"  {ws['note']}")
        return
    rows = [
        [
            p["source"],
            " vs ".join(p["classes"]),
            format_ci(p["auc"]),
            " / ".join(str(p["counts"][c]["images"]) for c in p["classes"]),
            " / ".join(str(p["counts"][c]["patients"]) for c in p["classes"]),
        ]
        for p in ws["pairs"]
    ]
    rows += [
        [s, f"macro over {v['pairs']} pairs", format_ci(v["macro_auc"]), "", ""]
        for s, v in ws["per_source"].items()
        if v["pairs"] > 1
    ]
    print(table(["source", "classes", "AUC (95 % CI)", "images", "patients"], rows))
    for p in ws["skipped"]:
        counts = ", ".join(f"{c} {n['images']}" for c, n in p["counts"].items())
        print(f"  skipped: {p['source']} {' vs '.join(p['classes'])} ({p['reason']}; images: {counts})")


def print_within_site(ws: dict) -> None:
    """The pooled within-site figures (all class pairs, pairs with the positive class), then the pairwise AUC
    of each class pair inside each site, with counts; images of unknown site and view; or the note."""
    print(
        "within site (pairs of images taken at one site of one source: the figure a hospital cannot give away; "
        f"{ws['unknown_site']['images']} images of unknown site left out)"
    )
    if ws["note"]:
        print(f"  {ws['note']}")
        return
    positive = ws["positive_class"]
    header = ["pooled AUC", "all pairs (95 % CI)", f"pairs with {positive}", "image pairs", "strata"]
    from ..metrics.within import pooled_rows

    print(table(header, pooled_rows(ws)))
    print(
        f"  view alone: 0.5 = the view says nothing of the class within its sites; "
        f"{ws['unknown_view']['images']} images of unknown view left out of the view rows"
    )
    if ws["pairs"]:
        print_site_pairs(ws)


def print_site_pairs(ws: dict) -> None:
    """The pairwise AUC of each class pair inside each site, with its counts; skipped pairs."""
    from ..metrics.bootstrap import format_ci

    rows = [
        [
            p["source"],
            p["site"],
            " vs ".join(p["classes"]),
            format_ci(p["auc"]),
            " / ".join(str(p["counts"][c]["images"]) for c in p["classes"]),
            " / ".join(str(p["counts"][c]["patients"]) for c in p["classes"]),
        ]
        for p in ws["pairs"]
    ]
    print(table(["source", "site", "classes", "AUC (95 % CI)", "images", "patients"], rows))
    if ws["skipped"]:
        print(
            f"  {len(ws['skipped'])} site pair(s) with fewer than {ws['min_images_per_class']} images of a class "
            "(in the pooled figures, not listed)"
        )


def print_results(
    results: Iterable[dict], as_json: bool, progress: bool, line: Callable[[dict], str], done: str
) -> int:
    """Each result as it comes (``{"path", "status": "ok", …}`` or ``{"path", "status": "failed", "error"}``):
    one JSON object a line with ``as_json``, else ``path: line(result)`` or ``path: FAILED: error``; a progress
    bar on a terminal; then ``N images DONE, M failed`` on stderr. None processed is one line, exit 1."""
    ok = failed = 0
    if progress and sys.stderr.isatty():
        from tqdm import tqdm

        results = tqdm(results, unit="img", file=sys.stderr, leave=False)
    for r in results:
        ok, failed = ok + (r["status"] == "ok"), failed + (r["status"] != "ok")
        if as_json:
            print(json.dumps(r), flush=True)
        elif r["status"] == "ok":
            print(f"{r['path']}: {line(r)}", flush=True)
        else:
            print(f"{r['path']}: FAILED: {r['error']}", flush=True)
    print(f"{ok} images {done}, {failed} failed (research tool: not a diagnosis)", file=sys.stderr)
    if ok == 0:
        raise CovidnetError("no image could be processed" if failed else "no images found in the given paths")
    return 0
