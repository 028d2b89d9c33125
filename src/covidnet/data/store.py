"""The preprocessed store a build writes: every image already cropped and resized, packed into one
uint8 array (``images.npy``, memory-mapped on open), and an index table aligned with its rows
(``index.csv``). Training, evaluation and the audit read this, never image files.

A build with lung masks (``--lung-masks``, ``--lungs``) also writes ``masks.npy``: one uint8 label map per
image row, in the image's stored geometry (0 background, 255 lung, 127 ignore; zeros for an image without
a mask); the index's ``lung_mask`` column says which rows have one: the annotation set's name, ``predicted``
for a mask a model drew, or empty.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..contract import Contract
from ..errors import CovidnetError
from .lungmasks import NAME_KEY, PREDICTED
from .records import (
    BINARY_CLASSES,
    CLASSES,
    LABELS,
    NEGATIVE_ONLY,
    UNLABELLED,
    Record,
    patient_uid,
    to_binary,
    view_position,
)

IMAGES_FILE = "images.npy"
MASKS_FILE = "masks.npy"  # lung masks, rows aligned with images.npy (a build with --lung-masks or --lungs)
INDEX_FILE = "index.csv"
INDEX_COLUMNS = (
    "row",
    "patient_id",
    "filename",
    "label",
    "label_binary",
    "source",
    "split",
    "view",
    "age",
    "sex",
    "geographic",
    "opacity",
    "offset",
    "lung_mask",
    "site",
)  # geographic, opacity, offset: severity scores (0-8) and days since onset, or empty; lung_mask: the
#   annotation set of the row's lung mask, "predicted", or empty; site: where the film was taken (``Record.site``),
#   empty where unknown (and in a store built before the column: it reads as unknown)


def load_array(path: Path) -> np.ndarray:
    """A store's ``.npy`` of (N, S, S) uint8 images, memory-mapped (no page read); a damaged one (its header
    mutated or cut) is a one-line error naming it."""
    try:
        arr = np.load(path, mmap_mode="r")
    except Exception as e:  # NumPy raises ValueError, SyntaxError, TokenError, OSError, ... on a bad header
        detail = " ".join(str(e).split())[:120]
        raise CovidnetError(
            f"{path}: not a readable .npy array ({type(e).__name__}: {detail}); the dataset is damaged"
        ) from None
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[1] != arr.shape[2]:
        raise CovidnetError(f"{path}: not a store of square uint8 images ({arr.dtype}, shape {arr.shape})")
    return arr


def _num(v) -> str:
    return "" if v is None else f"{v:.10g}"


def write_index(path: Path, rows: list[tuple[Record, str]]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(INDEX_COLUMNS)
        for n, (r, split) in enumerate(rows):
            w.writerow(
                [
                    n,
                    r.patient_id,
                    r.filename,
                    r.label,
                    to_binary(r.label),
                    r.source,
                    split,
                    r.view or "",
                    _num(r.age),
                    r.sex or "",
                    _num(r.extra.get("geographic")),
                    _num(r.extra.get("opacity")),
                    _num(r.extra.get("offset_days")),
                    r.extra.get(NAME_KEY) or "",
                    r.site,
                ]
            )


class RowFile:
    """An ``.npy`` file of (N, S, S) uint8 images, read and written a row at a time with ``os.pread`` /
    ``os.pwrite``. No memory map: the pages pass through the kernel's page cache, which is not the
    process's resident memory and is given back under pressure, so a build or a pass over 85,000 images
    at 480 px (19.5 GB) holds one row, not the file."""

    def __init__(self, path: Path, writable: bool = False):
        header = load_array(path)  # the header only: no page of the data is touched
        self.path, self.shape, self.offset = Path(path), header.shape, header.offset
        self.row_bytes = int(np.prod(header.shape[1:]))
        del header
        self.fd = os.open(path, os.O_RDWR if writable else os.O_RDONLY)

    @classmethod
    def create(cls, path: Path, n: int, size: int) -> RowFile:
        """A new file of ``n`` zero images of ``size`` x ``size`` (sparse until written)."""
        header = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(max(n, 1), size, size))
        del header
        return cls(path, writable=True)

    def read(self, rows, out: np.ndarray | None = None) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        out = np.empty((len(rows), *self.shape[1:]), np.uint8) if out is None else out[: len(rows)]
        flat = out.reshape(len(rows), -1)
        for k, r in enumerate(rows):
            if not 0 <= r < self.shape[0]:
                raise IndexError(f"row {r} of a store of {self.shape[0]} images")
            if os.preadv(self.fd, [flat[k]], self.offset + int(r) * self.row_bytes) != self.row_bytes:
                raise CovidnetError(f"{self.path}: short read at row {r}; the dataset is damaged")
        return out

    def write(self, row: int, image: np.ndarray) -> None:
        data = np.ascontiguousarray(image, dtype=np.uint8)
        if data.nbytes != self.row_bytes:
            raise ValueError(f"an image of {data.shape} into rows of {self.shape[1:]}")
        os.pwrite(self.fd, data.data, self.offset + int(row) * self.row_bytes)

    def close(self) -> None:
        os.close(self.fd)


class RowsView:
    """Some rows of a store as a read-only sequence of images: ``len``, and ``view[k]``, ``view[a:b]`` or
    ``view[positions]`` read just those rows (``Store.read``). What the audit and the studies hand to code
    that takes an array of images, so that a store is never read whole."""

    def __init__(self, store: Store, rows: np.ndarray):
        self.store, self.rows = store, np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, which) -> np.ndarray:
        if isinstance(which, (int, np.integer)):
            return self.store.read(self.rows[[which]])[0]
        return self.store.read(self.rows[which])


@dataclass
class Store:
    root: Path
    images: np.ndarray  # (N, size, size) uint8, memory-mapped
    index: list[dict[str, str]]  # one dict per row, INDEX_COLUMNS
    contract: Contract  # the preprocessing the build applied (its pixel half)

    @property
    def size(self) -> int:
        return int(self.images.shape[-1])

    def build_config(self) -> dict:
        """The options ``covidnet data build`` was given (``config.json``; empty where it is missing)."""
        path = self.root / "config.json"
        try:
            config = json.loads(path.read_text()) if path.is_file() else {}
        except ValueError:
            raise CovidnetError(f"{path}: not readable JSON; the dataset is damaged") from None
        if not isinstance(config, dict):
            raise CovidnetError(f"{path}: not a JSON object of build options; the dataset is damaged")
        return config

    def read(self, rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """The stored pixels of ``rows`` (B, S, S), read by row (``RowFile``): unlike indexing the memory
        map, this leaves no file pages mapped into the process, so reading a store of any size one batch
        at a time keeps resident memory at one batch."""
        if not hasattr(self, "_rows"):
            self._rows = RowFile(self.root / IMAGES_FILE)
        return self._rows.read(rows, out)

    @property
    def masks(self) -> np.ndarray | None:
        """The lung masks (N, S, S) uint8, memory-mapped; None for a store built without them."""
        if not hasattr(self, "_masks"):
            path = self.root / MASKS_FILE
            self._masks = load_array(path) if path.is_file() else None
            if self._masks is not None and self._masks.shape != self.images.shape:
                raise CovidnetError(
                    f"{path}: {self._masks.shape} masks for {self.images.shape} images; the dataset is damaged"
                )
        return self._masks

    def read_masks(self, rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """The stored lung masks of ``rows`` (B, S, S), read by row as ``read`` reads images; an error for a
        store built without masks."""
        if self.masks is None:
            raise CovidnetError(
                f"{self.root}: built without lung masks; rebuild it with --lung-masks NAME=DIR (or --lungs CKPT)"
            )
        if not hasattr(self, "_mask_rows"):
            self._mask_rows = RowFile(self.root / MASKS_FILE)
        return self._mask_rows.read(rows, out)

    def mask_rows(self, split: str | None = None, predicted: bool = False) -> np.ndarray:
        """Row numbers of ``split`` (all when None) that have an annotated lung mask; with ``predicted``,
        those whose mask a model drew (``data build --lungs``) instead."""
        want = (lambda v: v == PREDICTED) if predicted else (lambda v: v not in ("", PREDICTED))
        return np.array(
            [
                int(r["row"])
                for r in self.index
                if (split is None or r["split"] == split) and want(r.get("lung_mask") or "")
            ],
            dtype=np.int64,
        )

    def mask_layer(self) -> MaskLayer:
        """The masks as ``covidnet.feed.stage`` takes a store (``images`` for the shape, ``read`` by rows)."""
        if self.masks is None:
            self.read_masks(np.zeros(0, np.int64))  # the error
        return MaskLayer(self.masks, self.read_masks)

    def rows(self, split: str | None = None) -> np.ndarray:
        """Row numbers of ``split`` (all rows when None)."""
        return np.array([int(r["row"]) for r in self.index if split is None or r["split"] == split], dtype=np.int64)

    def labels(self, rows: np.ndarray | None = None, binary: bool = False) -> np.ndarray:
        """Class indices of ``rows``: CLASSES order, or BINARY_CLASSES order when ``binary``."""
        rows = self.rows() if rows is None else rows
        names = [self.index[i]["label"] for i in rows]
        if UNLABELLED in names:
            raise CovidnetError(
                f"{self.root}: {names.count(UNLABELLED)} of these {len(names)} images have no label (films staged "
                "by `covidnet pretrain --images`); they serve self-supervised pretraining only"
            )
        if binary:
            return np.array([BINARY_CLASSES.index(self.index[i]["label_binary"]) for i in rows], dtype=np.int64)
        if NEGATIVE_ONLY in names:  # a binary release says negative, not whether normal or pneumonia
            raise CovidnetError(
                f"{self.root}: {names.count(NEGATIVE_ONLY)} of these {len(names)} images are labelled only "
                f"{NEGATIVE_ONLY!r} (a binary COVIDx release); train or evaluate them with --binary"
            )
        return np.array([CLASSES.index(n) for n in names], dtype=np.int64)

    def view(self, rows: np.ndarray) -> RowsView:
        """``rows`` as a sequence of images read on demand."""
        return RowsView(self, rows)

    def names(self, rows: np.ndarray) -> list[str]:
        return [self.index[i]["filename"] for i in rows]

    def sources(self, rows: np.ndarray) -> list[str]:
        return [self.index[i]["source"] for i in rows]

    def sites(self, rows: np.ndarray) -> list[str]:
        """Where each film of ``rows`` was taken (``Record.site``); '' where unknown, and for every row of a
        store built before the index had the column."""
        return [self.index[i].get("site") or "" for i in rows]

    def views(self, rows: np.ndarray) -> list[str]:
        """The view of each film of ``rows`` as the within-(site, view) figures stratify it
        (``records.view_position``: 'PA', 'AP', 'AP supine'; '' where unknown)."""
        return [view_position(self.index[i].get("view")) for i in rows]

    def patients(self, rows: np.ndarray | None = None) -> list[str]:
        """Patient uids (``source:patient``) of ``rows``: the unit of the bootstrap and of grouped folds."""
        rows = self.rows() if rows is None else rows
        return [patient_uid(self.index[i]["source"], self.index[i]["patient_id"]) for i in rows]

    def column(self, name: str, rows: np.ndarray | None = None) -> np.ndarray:
        """A numeric column of ``rows`` as float64, NaN where it is empty (or absent: a dataset built
        before the column existed)."""
        rows = self.rows() if rows is None else rows
        return np.array([float(self.index[i].get(name) or "nan") for i in rows], dtype=np.float64)

    def derive(self, folder: Path | str, splits: list[str]) -> Store:
        """A dataset in ``folder`` with these images (linked, not copied), this contract, and the split
        column replaced by ``splits`` (one per row): how the audit and studies hold a source out."""
        import os

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        os.symlink(Path(self.root).absolute() / IMAGES_FILE, folder / IMAGES_FILE)
        if (Path(self.root) / MASKS_FILE).is_file():
            os.symlink(Path(self.root).absolute() / MASKS_FILE, folder / MASKS_FILE)
        with open(folder / INDEX_FILE, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(INDEX_COLUMNS))
            w.writeheader()
            for r, split in zip(self.index, splits, strict=True):
                w.writerow({**{k: r.get(k, "") for k in INDEX_COLUMNS}, "split": split})
        self.contract.write(folder)
        return open_store(folder)


@dataclass
class MaskLayer:
    """A store's masks where a store's images are expected (``covidnet.feed.stage``)."""

    images: np.ndarray
    read: object


def open_store(root: Path | str) -> Store:
    root = Path(root)
    images_path, index_path = root / IMAGES_FILE, root / INDEX_FILE
    for p in (images_path, index_path):
        if not p.is_file():
            raise CovidnetError(f"{p}: not found; is {root} a dataset written by `covidnet data build`?")
    images = load_array(images_path)
    index = _read_index(index_path)
    if len(index) != len(images):
        raise CovidnetError(
            f"{root}: index.csv has {len(index)} rows but images.npy {len(images)}; the dataset is damaged"
        )
    return Store(root, images, index, _read_contract(root, int(images.shape[-1])))


NUMERIC_COLUMNS = ("age", "geographic", "opacity", "offset")


def _read_index(path: Path) -> list[dict[str, str]]:
    """index.csv, every row checked as ``write_index`` writes it (its row number, a known label and binary
    label, numbers where numbers go; the split is free: the audit's derived stores add "external"), so that
    a damaged index is one line naming it and its line, not a wrong answer or a traceback later in training,
    evaluation or the audit."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f, restval="")
            index = list(reader)
            columns = reader.fieldnames or []
    except (UnicodeDecodeError, csv.Error) as e:
        raise CovidnetError(f"{path}: not a readable index ({e}); the dataset is damaged") from None
    missing = [
        c for c in ("row", "patient_id", "filename", "label", "label_binary", "source", "split") if c not in columns
    ]
    if missing:
        raise CovidnetError(f"{path}: no column {', '.join(missing)}; the dataset is damaged")
    for n, r in enumerate(index):
        r.pop(None, None)  # cells past the header's
        bad = next((why for wrong, why in _checks(r, n) if wrong), None)
        if bad:
            raise CovidnetError(f"{path}:{n + 2}: {bad}; the dataset is damaged, rebuild it with `covidnet data build`")
    return index


def _checks(r: dict[str, str], n: int):
    """(wrong, why) of each thing a row of index.csv must be."""
    yield r["row"] != str(n), f"row {r['row']!r} where {n} belongs"
    unlabelled = r["label"] == UNLABELLED  # a film staged for pretraining (``data.films``): no binary label either
    yield r["label"] not in LABELS and not unlabelled, f"label {r['label']!r}"
    yield (
        r["label_binary"] not in BINARY_CLASSES and not (unlabelled and not r["label_binary"]),
        (f"binary label {r['label_binary']!r}"),
    )
    for c in NUMERIC_COLUMNS:
        v = r.get(c) or ""
        yield v != "" and not _is_number(v), f"{c} {v!r} is not a number"


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _read_contract(root: Path, stored: int) -> Contract:
    """``contract.json``; a dataset built before it existed has its build options in ``config.json``."""
    contract = Contract.read(root)
    if contract is None:
        config = root / "config.json"
        if not config.is_file():
            raise CovidnetError(f"{root}: neither contract.json nor config.json; rebuild it with `covidnet data build`")
        try:
            build = json.loads(config.read_text())
            contract = Contract(stored_size=int(build["size"]), top_crop=float(build["top_crop"]))
        except (ValueError, TypeError, KeyError, CovidnetError) as e:
            raise CovidnetError(
                f"{config}: no readable size and top_crop ({type(e).__name__}: {e}); the dataset is damaged"
            ) from None
    if contract.stored_size != stored:
        raise CovidnetError(
            f"{root}: images.npy holds {stored}-px images but its contract says {contract.stored_size}; "
            "the dataset is damaged"
        )
    return contract
