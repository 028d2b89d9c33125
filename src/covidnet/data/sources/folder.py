"""A generic one-folder-per-class layout (``NORMAL/``, ``PNEUMONIA/``, ``COVID/``, …), e.g. the paediatric
Kermany set, and the COVID-19 Radiography Database, which is laid out the same way with an
``images/`` folder inside each class folder.

Such layouts carry no patient ids. Where file names hold one (Kermany's original 'person12_virus_34'),
it is used; otherwise each image counts as its own patient, and the report says that patient-level
splitting cannot be guaranteed for this source.

Sites: a folder of images says nothing of where they were taken, so the site is unknown (''), except for
Kermany's set, whose every film was taken at Guangzhou Women and Children's Medical Center (``KERMANY_SITE``,
Kermany et al., Cell 2018). The COVID-19 Radiography Database gathers films from many web sources: unknown.
"""

from __future__ import annotations

import re
from pathlib import Path

from ...errors import SourceError
from ..records import Record
from ._common import IMAGE_SUFFIXES, SourceData, require_dir

KERMANY_SITE = "Guangzhou Women and Children's Medical Center"
CLASS_FOLDERS = {
    "normal": "normal",
    "no finding": "normal",
    "pneumonia": "pneumonia",
    "viral pneumonia": "pneumonia",
    "bacterial pneumonia": "pneumonia",
    "covid": "COVID-19",
    "covid-19": "COVID-19",
    "covid19": "COVID-19",
}
# folders a source may have that are not COVIDx classes: excluded with their reason
OTHER_FOLDERS = {"lung_opacity": "finding not in COVIDx classes", "lung opacity": "finding not in COVIDx classes"}


def _images(folder: Path) -> list[Path]:
    inner = folder / "images"
    base = inner if inner.is_dir() else folder
    return sorted(p for p in base.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _patient(path: Path) -> tuple[str, bool]:
    m = re.match(r"(person\d+)_", path.stem, re.I)
    return (m.group(1), True) if m else (path.stem, False)


def read(root: Path, source: str = "folder", population: str | None = None, site: str = "") -> SourceData:
    root = require_dir(root, source)
    out = SourceData()
    class_dirs = [d for d in sorted(root.iterdir()) if d.is_dir()]
    known = [d for d in class_dirs if d.name.lower() in CLASS_FOLDERS]
    if not known:
        raise SourceError(
            f"{root}: no class folders for source {source!r} (expected some of: NORMAL, PNEUMONIA, COVID, "
            f"'Viral Pneumonia'; found: {', '.join(d.name for d in class_dirs) or 'nothing'})"
        )
    any_unknown_patient = False
    for d in class_dirs:
        key = d.name.lower()
        if key not in CLASS_FOLDERS:
            reason = OTHER_FOLDERS.get(key, "folder is not a COVIDx class")
            for p in _images(d):
                out.exclude(source, str(p), reason, f"class folder {d.name!r}")
            continue
        for p in _images(d):
            pid, known_patient = _patient(p)
            any_unknown_patient |= not known_patient
            extra = {"class_folder": d.name}
            if population:
                extra["population"] = population
            out.records.append(
                Record(patient_id=pid, path=p, label=CLASS_FOLDERS[key], source=source, extra=extra, site=site)
            )
    if any_unknown_patient:
        out.notes.append(
            f"{source}: no patient ids in this layout; each image counts as its own patient, so "
            "images of one patient may fall in different splits"
        )
    if population:
        out.notes.append(f"{source}: every record is {population}")
    return out


def read_kermany(root: Path, source: str = "kermany") -> SourceData:
    """Kermany et al.'s paediatric set: a folder layout whose every record is a child."""
    return read(root, source, population="paediatric", site=KERMANY_SITE)


def read_radiography_db(root: Path, source: str = "radiography-db") -> SourceData:
    """The COVID-19 Radiography Database (Chowdhury et al., Rahman et al.): COVID/, Normal/,
    'Viral Pneumonia'/, Lung_Opacity/, each with images/ (and masks/, ignored) and a metadata sheet."""
    return read(root, source)
