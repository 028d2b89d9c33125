"""A record: one image of one patient from one source, with its label and what the source says of it.

Every source reader turns its own layout into a list of ``Record``; everything after that (merge,
dedup, split, store, training) sees only records.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

CLASSES = ("normal", "pneumonia", "COVID-19")  # COVIDx's names and order, everywhere
BINARY_CLASSES = ("negative", "positive")
# A record's label: one of CLASSES, or "negative" where a binary COVIDx release (positive/negative) says only
# that (normal or pneumonia, it does not say which). Such records serve binary training only; a positive
# one is COVID-19, as in COVIDx, where every COVID-19 image is positive and every positive one COVID-19.
NEGATIVE_ONLY = "negative"
LABELS = (*CLASSES, NEGATIVE_ONLY)
UNLABELLED = "unlabelled"  # a film staged for self-supervised pretraining (``data.films``): no label, no class
PAEDIATRIC_AGE = 18  # years; below it a record is paediatric (excluded by the build unless asked; an audit group)
VIEWS = ("PA", "AP", "AP supine")  # the views the within-(site, view) figures stratify by (``view_position``)


def to_binary(label: str) -> str:
    """COVIDx's binary variant: COVID-19 is positive, normal and pneumonia (and a binary-only negative) are negative."""
    if label not in LABELS:
        raise ValueError(f"unknown label {label!r}; expected one of {', '.join(LABELS)}")
    return "positive" if label == "COVID-19" else "negative"


@dataclass
class Record:
    patient_id: str  # unique within its source; ``uid`` makes it unique across sources
    path: Path  # the image file (PNG, JPEG, WebP or DICOM)
    label: str  # one of CLASSES, or NEGATIVE_ONLY (a binary release's negative)
    source: str  # the source's name, e.g. "cohen"
    view: str | None = None  # as the source writes it: PA, AP, AP Supine, ...
    age: float | None = None  # years
    sex: str | None = None  # "M" / "F"
    extra: dict = field(default_factory=dict)  # anything else the source has (finding, date, location, …)
    name: str | None = None  # the image's name as COVIDx writes it, where the file's own name does not say it
    #                          (a TCIA tree's .../1-1.dcm); None: path.name
    site: str = ""  # the hospital or institution where the film was taken, as far as the source's metadata says
    #                 (``site_name``; one rule per reader, docs/data.md); "" is unknown

    @property
    def filename(self) -> str:
        """The image's name in label files and the index: ``name``, else the file's own name."""
        return self.name or self.path.name

    @property
    def stem(self) -> str:
        """The file name without extension: how official COVIDx lists are matched to images."""
        return Path(self.filename).stem

    @property
    def uid(self) -> str:
        """Patient id qualified by source (sources number their patients independently)."""
        return patient_uid(self.source, self.patient_id)


def site_name(text: str | None) -> str:
    """A site as a source's metadata writes it, normalised and nothing more: white space folded (none before
    a comma), stripped, trailing punctuation and '?' dropped; '' (unknown) where nothing is left.
    'Riccione, Italy ' and 'Boca Raton, Florida , USA' become 'Riccione, Italy' and 'Boca Raton, Florida, USA';
    '?' becomes ''. No place is guessed: 'Italy' stays 'Italy', a mis-encoded letter stays as written."""
    folded = re.sub(r"\s+,", ",", " ".join(str(text or "").split()))
    return folded.rstrip(" .,;:!?")


def view_position(view: str | None) -> str:
    """A view as the within-(site, view) figures stratify it (``VIEWS``): 'PA'; 'AP' (erect, semi-erect,
    portable or unqualified); 'AP supine'; '' where it is unknown, lateral, or says both AP and PA. Read word by
    word, so 'AP Supine', 'AP_supine', 'CHEST_AP_PORT' and 'AP semi erect' are read as a person would."""
    words = set(re.split(r"[^A-Z]+", str(view or "").upper())) - {""}
    ap, pa = "AP" in words, "PA" in words
    if ap == pa:
        return ""
    if pa:
        return "PA"
    return "AP supine" if "SUPINE" in words else "AP"


def patient_uid(source: str, patient_id: str) -> str:
    """A patient's identity across sources: ``source:patient`` (sources number their patients
    independently). The unit of every split, bootstrap and grouped cross-validation."""
    return f"{source}:{patient_id}"


def positive_class(classes) -> str:
    """The class a triage decision, an operating point and rebalancing are about: COVID-19, or
    ``positive`` for binary labels."""
    return "COVID-19" if "COVID-19" in classes else "positive"


@dataclass
class Exclusion:
    """A row or image a reader or the build left out, and why (written to report.json)."""

    source: str
    item: str  # the file or metadata row at fault, e.g. "metadata.csv:17" or an image path
    reason: str  # a short category: "lateral view", "unknown finding", "unreadable image", …
    detail: str = ""  # one line for the user: what was found, and where
