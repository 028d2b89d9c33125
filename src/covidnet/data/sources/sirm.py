"""The SIRM part of the COVID-19 Radiography Database (Chowdhury et al., Rahman et al.; Kaggle): its
``COVID/`` folder (images ``COVID-N.png``, in ``COVID/images/`` since version 4, directly in ``COVID/``
before) and its metadata sheet ``COVID.metadata.xlsx`` (columns FILE NAME, FORMAT, SIZE, URL; one row per
image), beside the folder or inside it. Only rows whose URL is SIRM's (host sirm.org, the Italian Society
of Medical and Interventional Radiology's COVID-19 case collection) are kept; the others (the database's
images from BIMCV/PadChest, GitHub, journals, ...) are left out as "not from SIRM", each with its URL.
Every image is COVID-19. The sheet has no patient ids: each image counts as its own patient, and the
report says so.

COVIDx lists these images as source ``sirm`` under older names of the database, 'COVID(63).png' or
'COVID (63).png' for today's 'COVID-63.png'; the build matches them by ``official_key``. Left open by the
documentation: COVIDx's notebook took every sheet row whose URL was not one of the ieee8023 collection's,
not only sirm.org rows, so some of COVIDx's "sirm" names may come from other sites and show as missing.
The sheet is read with the standard library (``read_sheet``).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from ...errors import SourceError
from ..records import Record
from ._common import ImageIndex, SourceData, read_sheet, require_dir

NAME = "sirm"
SHEET = "COVID.metadata.xlsx"


def is_sirm(url: str) -> bool:
    host = (urlparse(url.strip()).hostname or "").lower()
    return host == "sirm.org" or host.endswith(".sirm.org")


def read(root: Path, source: str = NAME) -> SourceData:
    root = require_dir(root, source)
    folder = root / "COVID"
    if not folder.is_dir():
        raise SourceError(
            f"{root}: no COVID folder for source {source!r}; expected the COVID-19 Radiography "
            "Database's folder holding COVID/ and COVID.metadata.xlsx"
        )
    sheet = next((p for p in (root / SHEET, folder / SHEET) if p.is_file()), root / SHEET)
    rows = read_sheet(sheet, source, ("FILE NAME", "FORMAT", "URL"))
    images = folder / "images" if (folder / "images").is_dir() else folder
    index = ImageIndex(images)
    out = SourceData()
    for n, row in enumerate(rows, start=2):  # row 1 is the header
        item = f"{sheet}:{n}"
        name, url = row["FILE NAME"].strip(), row["URL"].strip()
        if not is_sirm(url):
            out.exclude(source, item, "not from SIRM", f"{name}: URL {url!r}")
            continue
        listed = name if Path(name).suffix else f"{name}.{row['FORMAT'].strip().lower() or 'png'}"
        path, how = index.find_loose(listed)
        if path is None:
            out.exclude(
                source, item, "image missing", f"{images / listed} not found (nor another extension or numbering)"
            )
            continue
        if how == "key":
            out.anomaly(
                source, str(path), "file name differs from the sheet", f"{item} lists {listed!r}; on disk {path.name!r}"
            )
        out.records.append(
            Record(
                patient_id=path.stem, path=path, label="COVID-19", source=source, extra={"url": url, "sheet_row": item}
            )
        )
    if not out.records:
        raise SourceError(
            f"{sheet}: no image of source {source!r} found: {len(rows)} row(s), "
            f"{sum(is_sirm(r['URL']) for r in rows)} with a sirm.org URL"
        )
    out.notes.append(
        f"{source}: no patient ids in this layout; each image counts as its own patient, so images of "
        "one patient may fall in different splits"
    )
    return out
