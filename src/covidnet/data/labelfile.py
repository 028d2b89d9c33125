"""COVIDx label files of raw images and the image each line names, as ``covidnet eval --labels FILE --images DIR``
reads them.

A line is ``patientid filename label [source [site [view]]]``, space-separated: COVIDx's four columns, then two of
ours, so that an external set gets within-site and within-(site, view) figures too:

* ``site``: where the film was taken, one word: write a name's spaces as ``_`` ('Hannover_Medical_School' is
  read as 'Hannover Medical School', then normalised as ``records.site_name`` does); ``-`` for unknown.
* ``view``: ``PA``, ``AP`` or ``AP_supine`` (any case; 'AP_erect' and 'AP_semi_erect' are AP), ``-`` for unknown.

A source is needed before a site, a site before a view (``-`` holds a place). A file gives the site column on
every line or on none, and the view column likewise. Every structural problem stops with the file and line
named, before any image is read: a line of too few or too many columns, an unknown label, a site column that
some lines lack, a site that is empty after normalisation or that is a view (the columns swapped), a view that is
none of those above.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import CovidnetError
from ..imageio import IMAGE_SUFFIXES
from .records import site_name, view_position

LAYOUT = "'patientid filename label [source [site [view]]]'"
UNKNOWN = "-"  # a source, site or view the file does not know
VIEW_WORDS = {
    "PA",
    "AP",
    "SUPINE",
    "ERECT",
    "SEMI",
    "PORTABLE",
    "L",
    "LL",
    "RL",
    "LAT",
    "LATERAL",
}  # of views, not sites


@dataclass
class LabelRow:
    patient_id: str
    filename: str
    label: str
    source: str
    line: int
    site: str = ""  # '' unknown
    view: str = ""  # 'PA', 'AP', 'AP supine' (``records.view_position``), '' unknown


def read_label_file(path: Path | str, classes: Sequence[str]) -> list[LabelRow]:
    """A label file (the module's docstring): one ``LabelRow`` per line. Every structural problem stops with
    the file and line named."""
    path = Path(path)
    if not path.is_file():
        raise CovidnetError(f"{path}: label file not found")
    rows, widths = [], {}  # widths: line number of the first line with 3..6 columns
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        where = f"{path}:{n}"
        _check_columns(where, parts, classes)
        widths.setdefault(len(parts), n)
        source = "" if len(parts) < 4 or parts[3] == UNKNOWN else parts[3]
        site = _site(where, parts[4]) if len(parts) > 4 else ""
        view = _view(where, parts[5]) if len(parts) > 5 else ""
        rows.append(LabelRow(parts[0], parts[1], parts[2], source, n, site, view))
    if not rows:
        raise CovidnetError(f"{path}: the label file is empty")
    _check_consistent(path, widths)
    return rows


def _check_columns(where: str, parts: list[str], classes: Sequence[str]) -> None:
    """The number of columns and the label of one line."""
    if not 3 <= len(parts) <= 6:
        raise CovidnetError(
            f"{where}: expected {LAYOUT} (3 to 6 columns), got {len(parts)}: {' '.join(parts)!r} (a patient id, "
            "file name or site containing spaces? write a site's spaces as '_')"
        )
    if parts[2] not in classes:
        shifted = next((p for p in parts[3:] if p in classes), None)
        hint = f" ({shifted!r} comes later: a patient id or file name containing spaces?)" if shifted else ""
        raise CovidnetError(
            f"{where}: unknown label {parts[2]!r}{hint}; this checkpoint's classes are {', '.join(classes)}"
        )


def _site(where: str, token: str) -> str:
    """A site column's value: '' for '-', else the name with '_' read as a space, normalised."""
    if token == UNKNOWN:
        return ""
    site = site_name(token.replace("_", " "))
    if not site:
        raise CovidnetError(f"{where}: site column {token!r} names no site; write '-' for an unknown site")
    if set(site.upper().split()) <= VIEW_WORDS:
        raise CovidnetError(
            f"{where}: site column {token!r} is a view; the columns are {LAYOUT} (site before view; '-' for unknown)"
        )
    return site


def _view(where: str, token: str) -> str:
    """A view column's value: 'PA', 'AP', 'AP supine', or '' for '-'."""
    if token == UNKNOWN:
        return ""
    view = view_position(token)
    if not view:
        raise CovidnetError(
            f"{where}: view column {token!r} is not a frontal view; expected PA, AP, AP_supine or '-' (unknown)"
        )
    return view


def _check_consistent(path: Path, widths: dict[int, int]) -> None:
    """The site column on every line or none, and the view column likewise."""
    for column, name in ((5, "site"), (6, "view")):
        having = [n for w, n in widths.items() if w >= column]
        lacking = [n for w, n in widths.items() if w < column]
        if having and lacking:
            raise CovidnetError(
                f"{path}:{min(lacking)}: no {name} column, but line {min(having)} has one; a file gives the "
                f"{name} column on every line or on none (write '-' for an unknown {name})"
            )


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
