"""Stony Brook University COVID-19 Positive Cases (COVID-19-NY-SBU, TCIA): DICOM files in the tree TCIA's
downloader writes, ``<PatientID>/<StudyDate>-<StudyID>-<StudyDescription>-<uid5>/<SeriesNumber>-
<SeriesDescription>-<uid5>/1-1.dcm`` (e.g. ``A349708/01-26-1901-NA-CHEST_AP_PORT-59725/3.000000-AP-38183/
1-1.dcm``). The folder given may be the collection folder or any folder above it (the download's
``manifest-*/``). Every patient in the collection tested positive, so every image is COVID-19.

The collection holds CT, MR and PET series besides the radiographs (most of its half a million files):
only CR and DX are kept. A series is judged by its first file's header, so a CT series is left out as one
item (its folder, with its file count) rather than slice by slice. Of the radiographs only frontal views
are kept, by the header's ViewPosition and the series description ('AP', 'PA',
'CHEST_AP_PORT' are frontal; 'LL', 'LAT', 'LATERAL' lateral; when the two disagree, or neither says,
the image is left out as of unknown view). The patient is the header's PatientID (the top folder's name
where the header has none, with a note).

COVIDx names each image by its path with '-' for '/' and ``.jpg`` for ``.dcm`` ('A349708-01-26-1901-NA-
CHEST_AP_PORT-59725-3.000000-AP-38183-1-1.jpg', source ``stonybrook``); ``Record.name`` is that name
(with ``.dcm``), so ``--split-file`` lists match by stem. Left open by the documentation: this relies on
the downloader's descriptive folder names; a tree saved with the classic UID folder names reads the same
but its names match no COVIDx list. COVIDx 9A also lists 9 LATERAL series of this source, which this
reader leaves out (they show as missing in the official-split report). The collection is one hospital's, Stony
Brook University Hospital (New York): the site of every record (``SITE``).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

from pydicom import Dataset

from ...errors import SourceError
from ..records import Record
from ._common import SourceData, parse_age, parse_sex, read_header, require_dir, view_kind

NAME = "stonybrook"
SITE = "Stony Brook University Hospital"
TAGS = [
    "PatientID",
    "Modality",
    "ViewPosition",
    "SeriesDescription",
    "StudyDescription",
    "PatientAge",
    "PatientSex",
    "StudyDate",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "BodyPartExamined",
]


def covidx_name(path: Path) -> str:
    """COVIDx's name of an image: patient, study, series and file joined by '-'."""
    return "-".join(path.parts[-4:])


def read(root: Path, source: str = NAME) -> SourceData:
    root = require_dir(root, source)
    files = _dicom_files(root, source)
    out = SourceData()
    headers, to_read = _radiograph_series(files, source, out)
    no_pid = 0
    for path in to_read:
        ds = _read_header(path, headers, source, out)
        if ds is None:
            continue
        left_out = _not_frontal_radiograph(ds)
        if left_out:
            out.exclude(source, str(path), *left_out)
            continue
        pid = str(ds.get("PatientID", "") or "").strip()
        if not pid:
            no_pid += 1
            rel = path.relative_to(root).parts
            pid = rel[-4] if len(rel) >= 4 else rel[0]
        out.records.append(_record(path, ds, pid, source))
    if not out.records:
        why = ", ".join(f"{n} {r}" for r, n in Counter(e.reason for e in out.exclusions).most_common())
        raise SourceError(
            f"{root}: no frontal CR/DX images among {len(files)} DICOM file(s) of source {source!r} ({why})"
        )
    if no_pid:
        out.notes.append(
            f"{source}: {no_pid} image(s) without a PatientID in the header; their patient is the patient folder's name"
        )
    return out


def _dicom_files(root: Path, source: str) -> list[Path]:
    """The DICOM files under the folder, sorted; none stops the build."""
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in (".dcm", ".dicom"))
    if not files:
        raise SourceError(
            f"{root}: no DICOM files (.dcm) for source {source!r}; expected TCIA's COVID-19-NY-SBU tree "
            "<PatientID>/<study>/<series>/1-1.dcm"
        )
    return files


def _radiograph_series(files: list[Path], source: str, out: SourceData) -> tuple[dict[Path, Dataset], list[Path]]:
    """The series (folders) by their first file's header: a series of several files that is not CR or DX (CT,
    MR) is left out as one item. Returns the headers read (by file) and the files still to judge, in order."""
    series: dict[Path, list[Path]] = defaultdict(list)
    for path in files:
        series[path.parent].append(path)
    headers = {}
    for folder, members in series.items():
        try:
            first = read_header(members[0], stop_before_pixels=True, specific_tags=TAGS)
        except Exception:
            continue  # each file is tried, and reported, by _read_header
        modality = str(first.get("Modality", "") or "").upper()
        if modality not in ("CR", "DX") and len(members) > 1:  # a CT or MR series: one item, not one per slice
            out.exclude(
                source,
                str(folder),
                "not an X-ray",
                f"modality {modality or 'missing'!r}; the series' {len(members)} files",
            )
            members.clear()
            continue
        headers[members[0]] = first
    return headers, [p for members in series.values() for p in members]


def _read_header(path: Path, headers: dict[Path, Dataset], source: str, out: SourceData) -> Dataset | None:
    """A file's header (already read, or read now); None, and the file left out, where it is unreadable."""
    try:
        return headers[path] if path in headers else read_header(path, stop_before_pixels=True, specific_tags=TAGS)
    except Exception as e:
        out.exclude(source, str(path), "unreadable image", f"DICOM header unreadable: {type(e).__name__}: {e}")
        return None


def _header_view(ds: Dataset) -> tuple[str, str]:
    """The header's ViewPosition and SeriesDescription, stripped ('' where absent)."""
    return str(ds.get("ViewPosition", "") or "").strip(), str(ds.get("SeriesDescription", "") or "").strip()


def _not_frontal_radiograph(ds: Dataset) -> tuple[str, str] | None:
    """Why an image is left out (reason, detail), or None for a frontal CR/DX radiograph (by the header's
    ViewPosition and series description)."""
    modality = str(ds.get("Modality", "") or "").upper()
    if modality not in ("CR", "DX"):
        return "not an X-ray", f"modality {modality or 'missing'!r}"
    view, desc = _header_view(ds)
    kind = view_kind(view, desc)
    if kind != "frontal":
        reason = "lateral view" if kind == "lateral" else "view not frontal or unknown"
        return reason, f"ViewPosition {view!r}, series description {desc!r}"
    return None


def _record(path: Path, ds: Dataset, pid: str, source: str) -> Record:
    """The record of a kept image, named as COVIDx names it."""
    view, desc = _header_view(ds)
    return Record(
        patient_id=pid,
        path=path,
        label="COVID-19",
        source=source,
        view=view or desc or None,
        age=parse_age(ds.get("PatientAge")),
        sex=parse_sex(ds.get("PatientSex")),
        name=covidx_name(path),
        site=SITE,
        extra={
            "study_uid": str(ds.get("StudyInstanceUID", "")),
            "study_date": str(ds.get("StudyDate", "")),
            "study_description": str(ds.get("StudyDescription", "") or ""),
            "series_description": desc,
        },
    )
