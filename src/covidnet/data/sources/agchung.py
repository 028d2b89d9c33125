"""The agchung repositories, Figure1-COVID-chestxray-dataset and Actualmed-COVID-chestxray-dataset:
``metadata.csv`` + ``images/``. Figure 1 names each image after its ``patientid``; Actualmed names it
in an ``imagename`` column.

Figure 1 writes a patient's second image as a letter suffix on the id ('COVID-00003a', 'COVID-00003b');
the reference builder took those for two patients, which lets one patient straddle train and test. We
strip the suffix, so both images belong to patient 'COVID-00003'.

Sites: Actualmed's images are one company's (Actualmed, Spain), so every record's site is ``ACTUALMED_SITE``;
Figure 1's are cases that clinicians posted to a case-sharing platform from wherever they worked, and its
metadata names no hospital, so their site is unknown ('').
"""

from __future__ import annotations

import re
from pathlib import Path

from ..records import Record
from ._common import ImageIndex, SourceData, parse_age, parse_sex, read_table, require_dir

ACTUALMED_SITE = "Actualmed"
LABELS = {"covid-19": "COVID-19", "pneumonia": "pneumonia", "no finding": "normal", "normal": "normal"}


def _patient(pid: str) -> str:
    return re.sub(r"(?<=\d)[a-z]$", "", pid.strip())


def _read(root: Path, source: str, image_column: str | None, site: str) -> SourceData:
    root = require_dir(root, source)
    meta = root / "metadata.csv"
    rows = read_table(meta, source, ("patientid", "finding") + ((image_column,) if image_column else ()))
    index = ImageIndex(root / "images")
    out = SourceData()
    for i, row in enumerate(rows, start=2):
        item = f"{meta}:{i}"
        view = (row.get("view") or "").strip()
        if view.lower().startswith("l"):  # 'L', 'lateral'
            out.exclude(source, item, "lateral view", f"view {view!r}")
            continue
        finding = row["finding"].strip()
        label = LABELS.get(finding.lower())
        if label is None:
            out.exclude(
                source, item, "unlabelled" if not finding else "finding not in COVIDx classes", f"finding {finding!r}"
            )
            continue
        name = row[image_column].strip() if image_column else row["patientid"].strip()
        path = index.find(name)
        if path is None:
            out.exclude(source, item, "image missing", f"{root / 'images' / name}.* not found")
            continue
        out.records.append(
            Record(
                patient_id=_patient(row["patientid"]),
                path=path,
                label=label,
                source=source,
                view=view or None,
                age=parse_age(row.get("age")),
                sex=parse_sex(row.get("sex")),
                extra={"finding": finding},
                site=site,
            )
        )
    return out


def read_figure1(root: Path, source: str = "figure1") -> SourceData:
    return _read(root, source, None, "")


def read_actualmed(root: Path, source: str = "actualmed") -> SourceData:
    return _read(root, source, "imagename", ACTUALMED_SITE)
