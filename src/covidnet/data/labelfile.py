"""COVIDx label files of raw images (``patientid filename label [source]`` per line) and the image each
line names, as ``covidnet eval --labels FILE --images DIR`` reads them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import CovidnetError
from ..imageio import IMAGE_SUFFIXES


@dataclass
class LabelRow:
    patient_id: str
    filename: str
    label: str
    source: str
    line: int


def read_label_file(path: Path | str, classes: Sequence[str]) -> list[LabelRow]:
    """A COVIDx label file: ``patientid filename label [source]`` per line, space-separated. Every
    structural problem stops with the file and line named."""
    path = Path(path)
    if not path.is_file():
        raise CovidnetError(f"{path}: label file not found")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) not in (3, 4):
            raise CovidnetError(
                f"{path}:{n}: expected 'patientid filename label [source]' (3 or 4 columns), got "
                f"{len(parts)}: {line.strip()!r} (a patient id or file name containing spaces?)"
            )
        if parts[2] not in classes:
            raise CovidnetError(
                f"{path}:{n}: unknown label {parts[2]!r}; this checkpoint's classes are {', '.join(classes)}"
            )
        rows.append(LabelRow(parts[0], parts[1], parts[2], parts[3] if len(parts) == 4 else "", n))
    if not rows:
        raise CovidnetError(f"{path}: the label file is empty")
    return rows


def find_image(images: Path, filename: str) -> Path | None:
    """``images/filename``, or the same stem with another image extension (COVIDx lists name PNGs)."""
    p = images / filename
    if p.is_file():
        return p
    for ext in IMAGE_SUFFIXES:
        q = images / (Path(filename).stem + ext)
        if q.is_file():
            return q
    return None
