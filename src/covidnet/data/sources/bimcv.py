"""BIMCV-COVID19+ (Valencian Region Medical Image Bank; the COVID-19 positive partition, ``covid19_posi/``),
in its BIDS-like layout (MIDS):

* ``sub-<S>/ses-<E>/mod-rx/sub-<S>_ses-<E>_run-<n>_bp-chest_vp-<pa|ap|ll>_<cr|dx>.png`` (16-bit PNGs), each
  with a JSON sidecar of the same stem holding the image's DICOM header (DICOM JSON model, tags as
  '00185101': {'vr': 'CS', 'Value': ['PA']}; sidecars keyed by keyword, 'ViewPosition': 'PA', are read too);
* ``participants.tsv`` (participant, age as '[80]', gender), ``sub-<S>/sub-<S>_sessions.tsv`` (session_id,
  study_date, ...) and ``derivatives/labels/labels_covid*posi*.tsv`` (ReportID = session, the report's
  radiological findings as UMLS terms). The tables come in separate archives; where one is absent its
  fields stay empty and the report says so.

Every subject of the partition had a positive PCR or antibody test, so every image is COVID-19 (as in
COVIDx); the findings table is kept in ``extra['findings']``, not used for the label. The patient is the
subject ('S03097', as COVIDx writes it). Only chest radiographs (``bp-chest``; modality CR or DX) in
frontal views are kept: the view comes from the sidecar's ViewPosition and SeriesDescription ('TORAX PA',
'LATERAL'), and, where the sidecar says nothing, from the file name's ``vp-`` entity.

COVIDx lists these images by a name of its own, '<stem>-corrected.png' (its windowed re-encoding); the
build matches that to the stem (``official_key``). Left open by the documentation: which sidecar fields
every release fills (ViewPosition is often empty, hence the fallbacks), and whether COVIDx dropped some
sessions on purpose; the official-split report lists the names it could not match.

Sites. The bank gathers the films of the Valencian region's public hospitals; its tables name none, and its
headers are de-identified. Where a sidecar keeps InstitutionName (0008,0080), that is the site
(``records.site_name``); otherwise the site is unknown, never the bank itself (a region is not a hospital).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from pydicom.datadict import keyword_for_tag

from ...errors import SourceError
from ..records import Record, site_name
from ._common import SourceData, parse_sex, read_table, require_dir, view_kind

NAME = "bimcv"
ENTITY = re.compile(r"(?:^|_)([a-z]+)-([A-Za-z0-9]+)")
SIDECAR_FIELDS = ("ViewPosition", "SeriesDescription", "Modality", "BodyPartExamined", "PatientSex", "InstitutionName")


def entities(stem: str) -> dict[str, str]:
    """BIDS entities of a file name, and its suffix: {'sub': 'S03097', 'ses': 'E26968', 'vp': 'pa', '_suffix': 'dx'}."""
    found = {k: v for k, v in ENTITY.findall(stem)}
    found["_suffix"] = stem.rsplit("_", 1)[-1] if "_" in stem else ""
    return found


def read_sidecar(path: Path) -> dict[str, str]:
    """The header fields of a JSON sidecar (DICOM JSON model or keyword keys) as text."""
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    out = {}
    for key, value in data.items():
        word = key
        if re.fullmatch(r"[0-9A-Fa-f]{8}", key):
            word = keyword_for_tag(int(key, 16)) or key
        if isinstance(value, dict) and "vr" in value:  # DICOM JSON model
            value = (value.get("Value") or [""])[0]
            if isinstance(value, dict):  # a person name: {'Alphabetic': ...}
                value = value.get("Alphabetic", "")
        elif isinstance(value, list):
            value = value[0] if value else ""
        out[word] = "" if value is None else str(value)
    return out


def _tsv(path: Path, source: str) -> list[dict[str, str]]:
    return read_table(path, source, (), delimiter="\t")


def _age(text: str) -> float | None:
    """participants.tsv writes ages as a list, one per study year ('[80]', '[80, 81]'): the first."""
    m = re.search(r"\d+(?:\.\d+)?", text or "")
    return float(m.group()) if m else None


def read(root: Path, source: str = NAME) -> SourceData:
    root = require_dir(root, source)
    images = sorted(p for p in root.glob("sub-*/ses-*/mod-rx/*.png") if p.is_file())
    if not images:
        raise SourceError(f"{root}: no BIMCV-COVID19+ radiographs (sub-*/ses-*/mod-rx/*.png) for source {source!r}")
    out = SourceData()
    tables = _read_tables(root, source, out)
    no_sidecar = 0
    for path in images:  # the sessions' radiographs, in order
        ent = entities(path.stem)
        side = _sidecar_of(path, source, out)
        if side is None:
            no_sidecar += 1
            side = {}
        left_out = _not_frontal_chest(ent, side)
        if left_out:
            out.exclude(source, str(path), *left_out)
            continue
        out.records.append(_record(path, ent, side, tables, source))
    if not out.records:
        raise SourceError(
            f"{root}: no frontal chest CR/DX radiographs among {len(images)} image(s) of source {source!r}"
        )
    if no_sidecar:
        out.notes.append(
            f"{source}: {no_sidecar} image(s) without a JSON sidecar; their view is taken from the file name"
        )
    return out


def _read_tables(root: Path, source: str, out: SourceData) -> tuple[dict, dict, dict]:
    """The tables: participants by subject, sessions by session id, findings by session (ReportID); an absent
    participants or findings table is noted and leaves its fields empty."""
    participants, sessions, findings = {}, {}, {}
    if (root / "participants.tsv").is_file():
        participants = {r.get("participant", "").strip(): r for r in _tsv(root / "participants.tsv", source)}
    else:
        out.notes.append(f"{source}: {root / 'participants.tsv'} not found; ages and sexes from the sidecars only")
    for table in sorted(root.glob("sub-*/sub-*_sessions.tsv")):
        for r in _tsv(table, source):
            sessions[r.get("session_id", "").strip()] = r
    for table in sorted((root / "derivatives" / "labels").glob("labels_covid*posi*.tsv")):
        for r in _tsv(table, source):
            findings[r.get("ReportID", "").strip()] = r.get("Labels", "").strip()
    if not findings:
        out.notes.append(
            f"{source}: no findings table (derivatives/labels/labels_covid*posi*.tsv); findings left empty"
        )
    return participants, sessions, findings


def _sidecar_of(path: Path, source: str, out: SourceData) -> dict[str, str] | None:
    """The header fields of an image's JSON sidecar; {} where it is unreadable (an anomaly), None where
    there is none."""
    sidecar = path.with_suffix(".json")
    if not sidecar.is_file():
        return None
    try:
        return read_sidecar(sidecar)
    except (ValueError, UnicodeDecodeError) as e:
        out.anomaly(
            source,
            str(sidecar),
            "sidecar unreadable",
            f"{type(e).__name__}: {e}; the view is taken from the file name",
        )
        return {}


def _header_view(side: dict[str, str]) -> tuple[str, str]:
    """The sidecar's ViewPosition and SeriesDescription, stripped ('' where absent)."""
    return side.get("ViewPosition", "").strip(), side.get("SeriesDescription", "").strip()


def _not_frontal_chest(ent: dict[str, str], side: dict[str, str]) -> tuple[str, str] | None:
    """Why an image is left out (reason, detail), or None for a frontal chest CR/DX radiograph: body part and
    modality from the sidecar, else the file name; the view from the sidecar's ViewPosition and series
    description, and from the file name's ``vp-`` only where the header says nothing (not: disagrees)."""
    body = (side.get("BodyPartExamined") or ent.get("bp", "")).strip().lower()
    if body and body not in ("chest", "thorax", "torax", "tórax"):
        return "not a chest radiograph", f"body part {body!r}"
    modality = (side.get("Modality") or ent["_suffix"]).strip().upper()
    if modality not in ("CR", "DX"):
        return "not an X-ray", f"modality {modality or 'missing'!r}"
    view, series = _header_view(side)
    kind = view_kind(view, series)
    if kind is None and not view_kind(view) and not view_kind(series):  # the header says nothing (not: disagrees)
        kind = view_kind(ent.get("vp", ""))
    if kind != "frontal":
        reason = "lateral view" if kind == "lateral" else "view not frontal or unknown"
        return reason, f"ViewPosition {view!r}, series description {series!r}, file name vp-{ent.get('vp', '?')}"
    return None


def _record(
    path: Path, ent: dict[str, str], side: dict[str, str], tables: tuple[dict, dict, dict], source: str
) -> Record:
    """The record of a kept image: the subject as patient, age and sex from participants.tsv (sex else from
    the sidecar), the session's study date and findings."""
    participants, sessions, findings = tables
    view, series = _header_view(side)
    subject, session = f"sub-{ent.get('sub', '')}", f"ses-{ent.get('ses', '')}"
    who = participants.get(subject, {})
    return Record(
        patient_id=ent.get("sub", path.parts[-4]),
        path=path,
        label="COVID-19",
        source=source,
        view=view or ent.get("vp", "").upper() or None,
        age=_age(who.get("age", "")),
        sex=parse_sex(who.get("gender") or side.get("PatientSex")),
        site=site_name(side.get("InstitutionName")),
        extra={
            "session": session,
            "study_date": sessions.get(session, {}).get("study_date", ""),
            "findings": findings.get(session, ""),
            "series_description": series,
        },
    )
