"""Targets beyond the label, joined at build time: lung severity scores from a severity file, and the
days since symptom onset (``offset``) that COVID-RiskNet stratifies.

A severity file is the COVIDNet-S annotation table (``severity_annotations.csv`` of the reference
repository): one row per image, ``filename``, ``Geographic`` and ``Opacity`` (0-8 each: the sum over
both lungs of a 0-4 score; averages of several radiologists, so real numbers), and optionally
``dataset`` (``cohen``, ``actmed``, ``fig1``) and ``patientid``. Rows join images by file-name stem,
as official COVIDx lists do. A row that names no image, has a missing or non-numeric score, or a
score outside 0-8 is left out with its reason in ``report.json`` (``severity``); with ``--strict``
any such row stops the build.

An ``offset`` (cohen's metadata: days since symptom onset or admission) is carried for COVID-19
images; a missing, non-numeric or negative one leaves the image out of risk training, with its reason
in ``report.json`` (``risk``). Neither target removes an image from the dataset: it stays for
classification either way.
"""

from __future__ import annotations

import csv
import math
from collections import Counter, defaultdict
from dataclasses import asdict
from pathlib import Path

from ..errors import ConfigError
from .records import Exclusion, Record

SCORES = ("geographic", "opacity")
SCORE_MAX = 8.0  # each score: 0-4 per lung, summed over both lungs
DATASET_ALIASES = {
    "actmed": "actualmed",
    "fig1": "figure1",
    "cohen": "cohen",
    "actualmed": "actualmed",
    "figure1": "figure1",
}


def _number(text: str | None) -> float | None:
    try:
        v = float((text or "").strip())
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def read_severity_file(path: Path) -> tuple[list[dict], list[str]]:
    """The rows of a severity file (``filename``, ``geographic``, ``opacity`` as text, ``dataset``,
    ``line``) and its header. A missing file or one without the score columns stops the build."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: severity file not found")
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in reader.fieldnames or []]
        lower = {h.lower(): raw for h, raw in zip(header, reader.fieldnames or [])}
        missing = [c for c in ("filename", *SCORES) if c not in lower]
        if missing:
            raise ConfigError(
                f"{path}: a severity file needs the columns filename, Geographic and Opacity; "
                f"missing {', '.join(missing)} (header: {', '.join(header) or 'none'})"
            )
        rows = [
            {
                "filename": (r.get(lower["filename"]) or "").strip(),
                **{s: r.get(lower[s]) for s in SCORES},
                "dataset": (r.get(lower["dataset"]) or "").strip() if "dataset" in lower else "",
                "line": n,
            }
            for n, r in enumerate(reader, start=2)
        ]
    return rows, header


def join_severity(path: Path, records: list[Record], readers: dict[str, str]) -> tuple[dict, list[Exclusion]]:
    """Attach the scores of the severity file at ``path`` to ``records`` (``extra['geographic']``,
    ``extra['opacity']``, floats), matched by file-name stem; ``readers`` maps each source name to its
    reader, so that a row's ``dataset`` picks between records of one stem in several sources. Returns
    the report section and one exclusion per row left out."""
    rows, _ = read_severity_file(path)
    by_stem: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        by_stem[r.stem].append(r)
    excluded: list[Exclusion] = []
    joined: dict[int, int] = {}  # id(record) -> line of the row it took its scores from

    def leave_out(row: dict, reason: str, detail: str) -> None:
        excluded.append(Exclusion("severity", f"{path}:{row['line']}", reason, detail))

    for row in rows:
        name = row["filename"]
        values = {s: _number(row[s]) for s in SCORES}
        if not name:
            leave_out(row, "severity row without filename", "the filename cell is empty")
            continue
        bad = [s for s in SCORES if values[s] is None]
        if bad:
            what = ", ".join(f"{s} {row[s]!r}" for s in bad)
            leave_out(row, "severity score missing", f"{name}: {what} is not a number")
            continue
        out_of_range = [s for s in SCORES if not 0 <= values[s] <= SCORE_MAX]
        if out_of_range:
            what = ", ".join(f"{s} {values[s]:g}" for s in out_of_range)
            leave_out(row, "severity score out of range", f"{name}: {what} outside 0-{SCORE_MAX:g}")
            continue
        hits = by_stem.get(Path(name).stem, [])
        wanted = DATASET_ALIASES.get(row["dataset"].lower(), row["dataset"].lower())
        if len(hits) > 1 and wanted:
            hits = [r for r in hits if wanted in (r.source, readers.get(r.source))] or hits
        if not hits:
            leave_out(row, "severity row matches no image", f"no image with stem {Path(name).stem!r} in the sources")
            continue
        for r in hits:
            if id(r) in joined:
                leave_out(row, "second severity row for one image", f"{name}: already scored by line {joined[id(r)]}")
                break
        else:
            for r in hits:
                r.extra.update(values)
                joined[id(r)] = row["line"]
    section = {
        "file": str(path),
        "rows": len(rows),
        "rows_joined": len(rows) - len(excluded),
        "images_scored": len(joined),
        "excluded": {
            "count": len(excluded),
            "by_reason": dict(Counter(e.reason for e in excluded)),
            "items": [asdict(e) for e in excluded],
        },
    }
    return section, excluded


def check_offsets(records: list[Record]) -> tuple[dict, list[Exclusion]]:
    """Keep ``extra['offset']`` of COVID-19 records as a number of days >= 0 (``offset_days``); every
    COVID-19 record without one is listed with its reason (left out of risk training only)."""
    excluded = []
    usable = 0
    for r in records:
        if r.label != "COVID-19":
            continue
        text = str(r.extra.get("offset", "")).strip()
        days = _number(text)
        if not text:
            excluded.append(
                Exclusion(r.source, str(r.path), "no offset", "the source gives no days since symptom onset")
            )
        elif days is None:
            excluded.append(Exclusion(r.source, str(r.path), "offset not a number", f"offset {text!r}"))
        elif days < 0:
            excluded.append(
                Exclusion(
                    r.source, str(r.path), "negative offset", f"offset {days:g} days: imaged before the recorded onset"
                )
            )
        else:
            r.extra["offset_days"] = days
            usable += 1
    section = {
        "covid_images": usable + len(excluded),
        "with_offset": usable,
        "excluded": {
            "count": len(excluded),
            "by_reason": dict(Counter(e.reason for e in excluded)),
            "items": [asdict(e) for e in excluded],
        },
    }
    return section, excluded
