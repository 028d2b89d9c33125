"""What the source readers share: opening a metadata table (CSV, or an Excel sheet), finding an image by
name, telling frontal from lateral views, parsing ages, mapping findings, and the result type."""

from __future__ import annotations

import csv
import os
import re
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree import ElementTree

from ...errors import SourceError
from ...imageio import IMAGE_SUFFIXES
from ..records import Exclusion, Record


@dataclass
class SourceData:
    """What a reader returns: the records it kept and the rows it left out, with reasons."""

    records: list[Record] = field(default_factory=list)
    exclusions: list[Exclusion] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # caveats about the source as a whole, for the report
    # items kept although the source gets them wrong in a known way (a name that differs from the file on
    # disk, a binary label in a three-class list, a patient in two official splits), each with what was done
    anomalies: list[Exclusion] = field(default_factory=list)

    def exclude(self, source: str, item: str, reason: str, detail: str = "") -> None:
        self.exclusions.append(Exclusion(source, item, reason, detail))

    def anomaly(self, source: str, item: str, reason: str, detail: str = "") -> None:
        self.anomalies.append(Exclusion(source, item, reason, detail))


def require_dir(root: Path, source: str) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise SourceError(f"{root}: source folder for {source!r} does not exist")
    return root


def read_table(path: Path, source: str, required: tuple[str, ...], delimiter: str = ",") -> list[dict[str, str]]:
    """Rows of a CSV (or, with ``delimiter``, TSV) metadata file as dicts of text: a row shorter than the
    header has "" in its missing cells, cells past the header's are dropped. Stops the build if the file
    or a column is missing or the file is not UTF-8 text."""
    if not path.is_file():
        raise SourceError(f"{path}: metadata file of source {source!r} not found")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f, delimiter=delimiter, restval="")
            rows = list(reader)
            columns = reader.fieldnames or []
    except (UnicodeDecodeError, csv.Error, OSError) as e:
        raise SourceError(f"{path}: cannot be read as {'CSV' if delimiter == ',' else 'a table'} ({e})") from None
    for row in rows:
        row.pop(None, None)  # DictReader's key for the cells past the header's
    missing = [c for c in required if c not in columns]
    if missing:
        raise SourceError(f"{path}: missing column(s) {', '.join(missing)} (has: {one_line(', '.join(columns))})")
    return rows


def one_line(text: str, limit: int = 200) -> str:
    """Text from a file, fit for a one-line message: control characters (a newline in a quoted header)
    escaped, and cut at ``limit`` characters."""
    text = re.sub(r"[\x00-\x1f\x7f]", lambda m: repr(m.group())[1:-1], text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def read_header(path: Path, **options):
    """A DICOM file's header (``pydicom.dcmread`` with ``options``) with every value converted now: pydicom
    converts an element when it is first read, and a damaged one (a mutated VR) would raise then, outside the
    caller's try, of a type it does not expect (NotImplementedError)."""
    import pydicom

    ds = pydicom.dcmread(path, **options)
    for _ in ds:  # iterating converts each top-level element
        pass
    return ds


class ImageIndex:
    """Images under a folder, looked up by file name or, failing that, by stem (metadata written for
    one encoding still finds the image after re-encoding, e.g. ``x.png`` listed, ``x.jpg`` on disk)."""

    def __init__(self, folder: Path):
        self.by_name: dict[str, Path] = {}
        self.by_stem: dict[str, Path] = {}
        self._by_key: dict[str, Path] | None = None  # by official_key, built on first use
        if folder.is_dir():
            with os.scandir(folder) as entries:
                names = sorted(
                    e.name for e in entries if e.is_file() and os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES
                )
            for name in names:
                p = folder / name
                self.by_name[name] = p
                self.by_stem.setdefault(p.stem, p)

    def find(self, name: str) -> Path | None:
        return self.by_name.get(name) or self.by_stem.get(Path(name).stem)

    def find_loose(self, name: str) -> tuple[Path | None, str]:
        """As ``find``, and failing that by ``official_key``; with how it matched: "name", "stem" (another
        extension), "key" (e.g. 'COVID(63).png' listed, 'COVID-63.png' on disk) or "" (not found)."""
        if name in self.by_name:
            return self.by_name[name], "name"
        if Path(name).stem in self.by_stem:
            return self.by_stem[Path(name).stem], "stem"
        if self._by_key is None:
            self._by_key = {}
            for stem, p in self.by_stem.items():
                self._by_key.setdefault(official_key(stem), p)
        p = self._by_key.get(official_key(name))
        return p, "key" if p else ""


def official_key(name: str) -> str:
    """A file name reduced to what COVIDx label files and the sources' own files agree on: the stem, a
    trailing '(n)' or ' (n)' written '-n' (the COVID-19 Radiography Database renamed 'COVID (63).png' to
    'COVID-63.png'; COVIDx lists write 'COVID(63).png'), and without COVIDx's '-corrected' suffix (its name
    for its windowed re-encoding of a BIMCV-COVID19+ PNG). Used only where the exact stem matches nothing."""
    stem = Path(name.strip()).stem
    stem = re.sub(r"-corrected$", "", stem)
    return re.sub(r"\s*\((\d+)\)$", r"-\1", stem)


# --- sites --------------------------------------------------------------------------------------------


def one_spelling(records: list[Record]) -> None:
    """One spelling per site among a reader's records: sites that differ only in letter case are written as
    the most frequent of their spellings (the first in sorted order among equals). Nothing else is merged."""
    spellings: dict[str, Counter] = {}
    for r in records:
        if r.site:
            spellings.setdefault(r.site.casefold(), Counter())[r.site] += 1
    chosen = {k: min(c, key=lambda s: (-c[s], s)) for k, c in spellings.items()}
    for r in records:
        if r.site:
            r.site = chosen[r.site.casefold()]


# --- views --------------------------------------------------------------------------------------------

FRONTAL_WORDS = {"AP", "PA", "FRONTAL"}
LATERAL_WORDS = {"LL", "RL", "LAT", "LATERAL", "L"}


def view_kind(view_position: str | None, description: str | None = None) -> str | None:
    """'frontal', 'lateral' or None (unknown, or the two disagree) from a DICOM-like ViewPosition and a
    series description ('CHEST_AP_PORT', 'TORAX PA', 'LATERAL'), each read word by word."""

    def kind(text: str | None) -> str | None:
        words = set(re.split(r"[^A-Z]+", str(text or "").upper())) - {""}
        frontal, lateral = bool(words & FRONTAL_WORDS), bool(words & LATERAL_WORDS)
        return None if frontal == lateral else ("frontal" if frontal else "lateral")

    by_view, by_text = kind(view_position), kind(description)
    if by_view and by_text and by_view != by_text:
        return None
    return by_view or by_text


def read_sheet(path: Path, source: str, required: tuple[str, ...]) -> list[dict[str, str]]:
    """Rows of the first worksheet of an Excel workbook (.xlsx) as dicts keyed by the header row (names
    stripped); cells as text. Read with the standard library (an .xlsx is zipped XML), so no spreadsheet
    package is needed; stops the build if the file or a required column is missing."""
    if not path.is_file():
        raise SourceError(f"{path}: metadata sheet of source {source!r} not found")
    ns = {
        "m": "http://schemas.openxmlformats.org/spreadsheetml/2006/main",
        "r": "http://schemas.openxmlformats.org/officeDocument/2006/relationships",
    }
    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
            shared = []
            if "xl/sharedStrings.xml" in names:
                for si in ElementTree.fromstring(z.read("xl/sharedStrings.xml")).findall("m:si", ns):
                    shared.append("".join(t.text or "" for t in si.iter(f"{{{ns['m']}}}t")))
            book = ElementTree.fromstring(z.read("xl/workbook.xml"))
            first = book.find("m:sheets/m:sheet", ns)
            target = "worksheets/sheet1.xml"
            if first is not None and "xl/_rels/workbook.xml.rels" in names:
                rid = first.get(f"{{{ns['r']}}}id")
                for rel in ElementTree.fromstring(z.read("xl/_rels/workbook.xml.rels")):
                    if rel.get("Id") == rid:
                        target = rel.get("Target", target)
            target = target.lstrip("/") if target.startswith("/") else f"xl/{target}"
            sheet = ElementTree.fromstring(z.read(target))
    except (zipfile.BadZipFile, KeyError, ElementTree.ParseError, OSError) as e:
        raise SourceError(f"{path}: cannot be read as an Excel workbook (.xlsx): {type(e).__name__}: {e}") from None
    try:
        table = _sheet_table(sheet, shared, ns)
    except (ValueError, IndexError, TypeError) as e:  # a shared-string index or a cell reference that is not one
        raise SourceError(f"{path}: cannot be read as an Excel workbook (.xlsx): {type(e).__name__}: {e}") from None
    while table and not any(table[0]):
        table.pop(0)
    header = [h.strip() for h in table[0]] if table else []
    missing = [c for c in required if c not in header]
    if missing:
        has = one_line(", ".join(h for h in header if h))
        raise SourceError(f"{path}: missing column(s) {', '.join(missing)} (has: {has})")
    return [
        {h: (r[k].strip() if k < len(r) else "") for k, h in enumerate(header) if h}
        for r in table[1:]
        if any(x.strip() for x in r)
    ]


MAX_COLUMNS = 16384  # Excel's last column is XFD


def _sheet_table(sheet, shared: list[str], ns: dict) -> list[list[str]]:
    """A worksheet's cells as rows of text (shared strings resolved, gaps filled with "")."""
    table: list[list[str]] = []
    for row in sheet.iter(f"{{{ns['m']}}}row"):
        cells: dict[int, str] = {}
        for k, c in enumerate(row.findall("m:c", ns)):
            ref = re.match(r"([A-Z]+)", c.get("r", "")) if c.get("r") else None
            col = _column_number(ref.group(1)) if ref else k
            if col >= MAX_COLUMNS:
                raise ValueError(f"cell {c.get('r')} is past Excel's last column")
            kind, v = c.get("t", "n"), c.find("m:v", ns)
            if kind == "s" and v is not None:
                if int(v.text) < 0:
                    raise IndexError(f"shared string {v.text}")
                text = shared[int(v.text)]
            elif kind == "inlineStr":
                text = "".join(t.text or "" for t in c.iter(f"{{{ns['m']}}}t"))
            else:
                text = v.text if v is not None and v.text is not None else ""
                if kind == "n" and re.fullmatch(r"-?\d+\.0", text):
                    text = text[:-2]  # a whole number stored as a float
            cells[col] = text
        table.append([cells.get(k, "") for k in range(max(cells) + 1)] if cells else [])
    return table


def _column_number(letters: str) -> int:
    n = 0
    for ch in letters:
        n = n * 26 + ord(ch) - ord("A") + 1
    return n - 1


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
    "pneumonia",
    "viral",
    "bacterial",
    "fungal",
    "sars",
    "mers",
    "mers-cov",
    "influenza",
    "varicella",
    "herpes",
    "streptococcus",
    "klebsiella",
    "chlamydophila",
    "legionella",
    "e.coli",
    "staphylococcus",
    "mycoplasma",
    "mycoplasma bacterial pneumonia",
    "pneumocystis",
    "aspergillosis",
    "nocardia",
    "lung opacity",
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
