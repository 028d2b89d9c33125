"""One reader per public source, each turning the source's own layout into records.

``read_source(reader, path, name)`` is the entry point; ``READERS`` lists what ``--source NAME=PATH``
accepts.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ...errors import UsageError
from . import agchung, bimcv, cohen, covidx, folder, nih, ricord, rsna, sirm, stonybrook
from ._common import SourceData, map_finding, official_key

READERS: dict[str, Callable[..., SourceData]] = {
    "cohen": cohen.read,
    "figure1": agchung.read_figure1,
    "actualmed": agchung.read_actualmed,
    "rsna": rsna.read,
    "nih": nih.read,
    "radiography-db": folder.read_radiography_db,
    "ricord": ricord.read,
    "folder": folder.read,
    "kermany": folder.read_kermany,
    "covidx": covidx.read,
    "stonybrook": stonybrook.read,
    "bimcv": bimcv.read,
    "sirm": sirm.read,
}

# the names COVIDx label files write in their source column (train_COVIDx9A.txt also writes 'rnsa' for 199 RSNA rows)
COVIDX_SOURCE_ALIASES = {
    "fig1": "figure1",
    "actmed": "actualmed",
    "rsna": "rsna",
    "rnsa": "rsna",
    "cohen": "cohen",
    "ricord": "ricord",
    "sirm": "sirm",
    "stonybrook": "stonybrook",
    "bimcv": "bimcv",
}


def read_source(reader: str, path: Path, name: str | None = None, **options) -> SourceData:
    if reader not in READERS:
        raise UsageError(f"unknown source reader {reader!r}; available: {', '.join(READERS)}")
    return READERS[reader](
        Path(path), source=name or reader, **options
    )  # options: the reader's own, e.g. cohen's rules


__all__ = ["COVIDX_SOURCE_ALIASES", "READERS", "SourceData", "map_finding", "official_key", "read_source"]
