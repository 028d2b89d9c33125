"""What the source readers share: opening a metadata table, finding an image by name, parsing ages,
mapping findings, and the result type."""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import SourceError
from ..imageio import IMAGE_SUFFIXES
from ..records import Exclusion, Record



@dataclass
class SourceData:
    """What a reader returns: the records it kept and the rows it left out, with reasons."""

    records: list[Record] = field(default_factory=list)
    exclusions: list[Exclusion] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # caveats about the source as a whole, for the report

    def exclude(self, source: str, item: str, reason: str, detail: str = "") -> None:
        self.exclusions.append(Exclusion(source, item, reason, detail))


def require_dir(root: Path, source: str) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise SourceError(f"{root}: source folder for {source!r} does not exist")
    return root


def read_table(path: Path, source: str, required: tuple[str, ...]) -> list[dict[str, str]]:
    """Rows of a CSV metadata file as dicts; stops the build if the file or a column is missing."""
    if not path.is_file():
        raise SourceError(f"{path}: metadata file of source {source!r} not found")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            columns = reader.fieldnames or []
    except (UnicodeDecodeError, csv.Error) as e:
        raise SourceError(f"{path}: cannot be read as CSV ({e})") from None
    missing = [c for c in required if c not in columns]
    if missing:
        raise SourceError(f"{path}: missing column(s) {', '.join(missing)} (has: {', '.join(columns)})")
    return rows


class ImageIndex:
    """Images under a folder, looked up by file name or, failing that, by stem (metadata written for
    one encoding still finds the image after re-encoding, e.g. ``x.png`` listed, ``x.jpg`` on disk)."""

    def __init__(self, folder: Path):
        self.by_name: dict[str, Path] = {}
        self.by_stem: dict[str, Path] = {}
        if folder.is_dir():
            with os.scandir(folder) as entries:
                names = sorted(e.name for e in entries if e.is_file() and os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES)
            for name in names:
                p = folder / name
                self.by_name[name] = p
                self.by_stem.setdefault(p.stem, p)

    def find(self, name: str) -> Path | None:
        return self.by_name.get(name) or self.by_stem.get(Path(name).stem)


def parse_age(text: str | None) -> float | None:
    """'65', '058Y', '50+', '6M' -> years; None when absent or unparseable."""
    if not text:
        return None
    m = re.match(r"^\s*(\d+(?:\.\d+)?)\s*([YMWD]?)", str(text).strip(), re.I)
    if not m:
        return None
    value, unit = float(m.group(1)), m.group(2).upper()
    return value / {"": 1, "Y": 1, "M": 12, "W": 52, "D": 365}[unit]


def parse_sex(text: str | None) -> str | None:
    t = (text or "").strip().upper()[:1]
    return t if t in ("M", "F") else None


# Findings named in the public sources, mapped to COVIDx's classes. Pneumonias of any infectious cause
# are "pneumonia" as in the reference builder (which listed SARS, MERS, Streptococcus, Klebsiella,
# Chlamydophila, Legionella, E.Coli); we add the other infectious pneumonias the sources now name.
# Non-infectious findings (ARDS alone, lipoid or aspiration pneumonia, tuberculosis) are excluded.
PNEUMONIA_FINDINGS = {
    "pneumonia", "viral", "bacterial", "fungal", "sars", "mers", "mers-cov", "influenza", "varicella", "herpes",
    "streptococcus", "klebsiella", "chlamydophila", "legionella", "e.coli", "staphylococcus", "mycoplasma",
    "mycoplasma bacterial pneumonia", "pneumocystis", "aspergillosis", "nocardia", "lung opacity",
}
NORMAL_FINDINGS = {"no finding", "normal"}


def map_finding(finding: str) -> str | None:
    """A finding, flat ('COVID-19', 'SARS', 'COVID-19, ARDS') or hierarchical
    ('Pneumonia/Viral/COVID-19'), to a COVIDx class; None when it is none of them."""
    f = (finding or "").strip()
    parts = [p.strip().lower() for p in re.split(r"[/,]", f) if p.strip()]
    if not parts:
        return None
    if "covid-19" in parts or "covid19" in parts:
        return "COVID-19"
    if parts[0] in NORMAL_FINDINGS and len(parts) == 1:
        return "normal"
    if any(p in ("lipoid", "aspiration", "tuberculosis") for p in parts):
        return None
    if parts[0] == "pneumonia" or any(p in PNEUMONIA_FINDINGS for p in parts):
        return "pneumonia"
    return None
