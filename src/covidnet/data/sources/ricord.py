"""MIDRC-RICORD-1c (COVID-19 positive chest radiographs, TCIA): DICOM files in TCIA's folder tree
(``<PatientID>/<study>/<series>/*.dcm``). Every image is COVID-19. The patient id comes from the DICOM
header, with TCIA's collection prefix removed ('MIDRC-RICORD-1C-419639-000918' -> '419639-000918',
as COVIDx writes it). Only radiographs (CR, DX) are kept.

COVIDx names each image 'MIDRC-RICORD-1C-<patient>-<last 5 of the StudyInstanceUID>-<k>.png', k counting
the study's files in sorted order (create_ricord_dataset.ipynb); ``Record.name`` is that name (with
``.dcm``), so ``--split-file`` lists match by stem. COVIDx also cropped some of these images (its
ricord_data_set.txt); the build does not.

Sites. RICORD-1c's films come from four institutions (TCIA's collection page), which its de-identified headers
do not name; its patient ids do, in pseudonym: each is written '<site>-<patient>' ('419639-000918',
'440808-000055', 'SITE2-000216', the second site spelled out as such). The site is that code, as
'RICORD site 419639' (``site_of``); an id of another form leaves it unknown.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from ...errors import SourceError
from ..records import Record
from ._common import SourceData, parse_age, parse_sex, read_header, require_dir

NAME = "ricord"
PREFIX = "MIDRC-RICORD-1C-"
SITE_CODE = re.compile(r"^([A-Za-z0-9]+)-\d+$")  # '<site>-<patient>'


def site_of(patient_id: str) -> str:
    """The contributing site of a RICORD-1c patient, from its id: '419639-000918' -> 'RICORD site 419639'; ''
    for an id of another form."""
    m = SITE_CODE.match(patient_id.strip())
    return f"RICORD site {m.group(1)}" if m else ""


def read(root: Path, source: str = NAME) -> SourceData:
    root = require_dir(root, source)
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in (".dcm", ".dicom"))
    if not files:
        raise SourceError(f"{root}: no DICOM files (.dcm) for source {source!r}")
    out = SourceData()
    in_study: Counter = Counter()  # files seen so far per study folder: COVIDx's k
    for path in files:
        k = in_study[path.parent.parent]
        in_study[path.parent.parent] += 1
        try:
            ds = read_header(path, stop_before_pixels=True)
        except Exception as e:
            out.exclude(source, str(path), "unreadable image", f"DICOM header unreadable: {type(e).__name__}: {e}")
            continue
        modality = str(ds.get("Modality", "")).upper()
        if modality and modality not in ("CR", "DX"):
            out.exclude(source, str(path), "not an X-ray", f"modality {modality!r}")
            continue
        pid = str(ds.get("PatientID", "")).strip() or path.relative_to(root).parts[0]
        pid = pid[len(PREFIX) :] if pid.upper().startswith(PREFIX) else pid
        study_uid = str(ds.get("StudyInstanceUID", ""))
        out.records.append(
            Record(
                patient_id=pid,
                path=path,
                label="COVID-19",
                source=source,
                view=ds.get("ViewPosition") or None,
                age=parse_age(ds.get("PatientAge")),
                sex=parse_sex(ds.get("PatientSex")),
                extra={"study_uid": study_uid},
                name=f"{PREFIX}{pid}-{study_uid[-5:]}-{k}.dcm" if study_uid else None,
                site=site_of(pid),
            )
        )
    return out
