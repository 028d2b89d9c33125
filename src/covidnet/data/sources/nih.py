"""NIH ChestX-ray14: ``Data_Entry_2017.csv`` (NIH's own columns) + ``images/``.

``Finding Labels`` holds '|'-separated labels. 'No Finding' is normal; any image labelled Pneumonia
(alone or with co-labels) is pneumonia; images with other findings only are excluded, since COVIDx's
three classes do not describe them. NIH images are frontal (PA or AP). Every film was taken at one
hospital, the NIH Clinical Center (Bethesda, Maryland): the site of every record (``SITE``).
"""

from __future__ import annotations

from pathlib import Path

from ..records import Record
from ._common import ImageIndex, SourceData, parse_age, parse_sex, read_table, require_dir

NAME = "nih"
SITE = "NIH Clinical Center"


def read(root: Path, source: str = NAME) -> SourceData:
    root = require_dir(root, source)
    meta = root / "Data_Entry_2017.csv"
    if not meta.is_file():  # NIH also published the table under this name
        alt = root / "Data_Entry_2017_v2020.csv"
        meta = alt if alt.is_file() else meta
    rows = read_table(meta, source, ("Image Index", "Finding Labels", "Patient ID"))
    index = ImageIndex(root / "images")
    out = SourceData()
    for i, row in enumerate(rows, start=2):
        item = f"{meta}:{i}"
        labels = {x.strip() for x in row["Finding Labels"].split("|") if x.strip()}
        if labels == {"No Finding"}:
            label = "normal"
        elif "Pneumonia" in labels:
            label = "pneumonia"
        else:
            out.exclude(source, item, "finding not in COVIDx classes", f"labels {row['Finding Labels']!r}")
            continue
        path = index.find(row["Image Index"].strip())
        if path is None:
            out.exclude(source, item, "image missing", f"{root / 'images' / row['Image Index'].strip()} not found")
            continue
        out.records.append(
            Record(
                patient_id=str(int(row["Patient ID"]))
                if row["Patient ID"].strip().isdigit()
                else row["Patient ID"].strip(),
                path=path,
                label=label,
                source=source,
                view=(row.get("View Position") or "").strip() or None,
                age=parse_age(row.get("Patient Age")),
                sex=parse_sex(row.get("Patient Gender")),
                extra={"finding": row["Finding Labels"], "follow_up": row.get("Follow-up #", "")},
                site=SITE,
            )
        )
    return out
