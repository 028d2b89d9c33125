"""Lung masks as data, joined at build time: ``covidnet data build --lung-masks NAME=DIR``.

A lung mask is an image file of the same stem as the radiograph it outlines (any format
``covidnet.imageio`` reads, any size: a full-resolution mask of a downsampled image is resized to
the image, nearest neighbour), with the values the V7 Labs masks of the ieee8023 collection have:
**0** background, **255** lung, **127** ignore (pacemakers, lines and markup over the lungs). ``DIR`` is
a folder of them (walked recursively) or a ``.zip`` of them read in place, such as the
``torchxrayvision`` wheel's ``semantic_masks_v7labs_lungs.zip``; ``NAME`` labels the annotation set
(``v7labs``) in the index's ``lung_mask`` column.

Masks join images by file-name stem, as ``--severity`` joins its rows. A mask that names no image, names
images of several sources, is a second mask for one image, cannot be read, holds other values, holds no
lung, or is not the shape of its image, is left out with its reason in ``report.json`` (``lung_masks``);
with ``--strict`` any such mask stops the build. Each joined mask goes through its image's geometry
(``Contract.mask``) and is stored beside it (``masks.npy``, rows aligned with ``images.npy``).
"""

from __future__ import annotations

import math
import zipfile
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from ..contract import dilate
from ..errors import ConfigError, CovidnetError, ImageReadError, UsageError
from ..imageio import IMAGE_SUFFIXES, read_image, read_image_bytes
from .records import Exclusion, Record

BACKGROUND, IGNORE, LUNG = 0, 127, 255
MASK_VALUES = (BACKGROUND, IGNORE, LUNG)
PREDICTED = "predicted"  # the index's lung_mask for a mask a model drew (``data build --lungs``)
REF_KEY = "lung_mask_ref"  # Record.extra: the MaskRef joined to the record
NAME_KEY = "lung_mask"  # Record.extra: the annotation set of a mask that reached the store
ASPECT_TOLERANCE = 0.01  # relative, plus two pixels: masks rendered from polygons at another size
MAX_MEMBER_BYTES = 256 << 20  # a mask in a zip unpacks to at most this (a 16-bit 8000 x 8000 PNG is less)


@dataclass(frozen=True)
class MaskSpec:
    """``NAME=DIR``: an annotation set's name and its folder or zip."""

    name: str
    path: Path

    @classmethod
    def parse(cls, text: str) -> MaskSpec:
        name, sep, path = text.partition("=")
        if not sep or not name.strip() or not path.strip() or name.strip() == PREDICTED:
            raise UsageError(
                f"--lung-masks {text!r}: expected NAME=DIR (a folder or .zip of masks), e.g. v7labs=/data/lungmasks; "
                f"NAME may not be {PREDICTED!r}"
            )
        return cls(name.strip(), Path(path.strip()).expanduser())


@dataclass(frozen=True)
class MaskRef:
    """One mask file: a path, or a member of a zip (``member``)."""

    name: str  # the annotation set
    path: str
    member: str | None = None

    @property
    def item(self) -> str:
        """How report.json names it."""
        return f"{self.path}:{self.member}" if self.member else self.path

    @property
    def stem(self) -> str:
        return PurePosixPath(self.member).stem if self.member else Path(self.path).stem


def list_masks(spec: MaskSpec) -> list[MaskRef]:
    """The image files of an annotation set (sorted), from its folder or its zip."""
    path = spec.path
    if path.is_file() and zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as z:
                members = [m.filename for m in z.infolist() if not m.is_dir()]
        except Exception as e:  # zipfile raises BadZipFile, OSError, ValueError, ... on a damaged archive
            raise ConfigError(f"{path}: --lung-masks {spec.name}= is a damaged zip ({type(e).__name__}: {e})") from None
        return [
            MaskRef(spec.name, str(path.absolute()), m)
            for m in sorted(members)
            if PurePosixPath(m).suffix.lower() in IMAGE_SUFFIXES and not PurePosixPath(m).name.startswith(".")
        ]
    if not path.is_dir():
        raise ConfigError(f"{path}: --lung-masks {spec.name}= needs a folder of mask images or a .zip of them")
    files = (p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    return [MaskRef(spec.name, str(p.absolute())) for p in sorted(files) if not p.name.startswith(".")]


class MaskReader:
    """Reads masks, keeping each zip open (one per process: a build's workers each have their own)."""

    def __init__(self):
        self.zips: dict[str, zipfile.ZipFile] = {}

    def read(self, ref: MaskRef) -> np.ndarray:
        """The mask as a (H, W) uint8 array; ``ImageReadError`` for a file that cannot be read."""
        if ref.member is None:
            return read_image(ref.path)
        try:
            z = self.zips.get(ref.path) or self.zips.setdefault(ref.path, zipfile.ZipFile(ref.path))
            size = z.getinfo(ref.member).file_size
            if size > MAX_MEMBER_BYTES:  # what z.read would hold in memory (it stops at the declared size)
                raise ImageReadError(f"{ref.item}: {size:,} bytes unpacked, more than any mask ({MAX_MEMBER_BYTES:,})")
            data = z.read(ref.member)
        except ImageReadError:
            raise
        except Exception as e:  # a damaged member: BadZipFile (CRC, header), zlib.error, NotImplementedError, ...
            raise ImageReadError(f"{ref.item}: cannot be unpacked ({type(e).__name__}: {e})") from None
        return read_image_bytes(data, ref.item)


def mask_problem(mask: np.ndarray, image_shape: tuple[int, int] | None = None) -> tuple[str, str] | None:
    """(reason, detail) when a decoded mask cannot be used for an image of ``image_shape``, else None."""
    values = np.flatnonzero(np.bincount(mask.ravel(), minlength=256))
    other = [int(v) for v in values if v not in MASK_VALUES]
    if other:
        shown = ", ".join(map(str, other[:8])) + (", …" if len(other) > 8 else "")
        return "lung mask with other values", f"values {shown} besides 0, 127, 255 (background, ignore, lung)"
    if LUNG not in values:
        return "empty lung mask", "no lung pixel (255)"
    if image_shape is not None:
        (h, w), (mh, mw) = image_shape[:2], mask.shape
        if abs(math.log((mh / mw) / (h / w))) > ASPECT_TOLERANCE + 2 / min(h, w, mh, mw):
            return "lung mask shape does not match its image", f"mask {mw} x {mh} px, image {w} x {h} px"
    return None


def join_lung_masks(specs: list[MaskSpec], records: list[Record]) -> tuple[dict, list[Exclusion]]:
    """Attach each annotation set's masks to ``records`` by file-name stem (``extra[REF_KEY]``); the first
    set given wins where two outline one image. Returns the report section (completed by the build with
    what reading the masks found, ``finish_section``) and one exclusion per mask left out."""
    by_stem: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        by_stem[r.stem].append(r)
    excluded: list[Exclusion] = []
    sets = []
    for spec in specs:
        refs = list_masks(spec)
        before = len(excluded)
        for ref in refs:
            problem = _match(ref, by_stem.get(ref.stem, []))
            if problem:
                excluded.append(Exclusion("lung masks", ref.item, *problem))
        sets.append(
            {
                "name": spec.name,
                "path": str(spec.path.absolute()),
                "masks": len(refs),
                "left_out": len(excluded) - before,
            }
        )
    return {"sets": sets, "excluded": _excluded(excluded)}, excluded


def _match(ref: MaskRef, hits: list[Record]) -> tuple[str, str] | None:
    """Join ``ref`` to the records of its stem; (reason, detail) when it cannot be."""
    if not hits:
        return "lung mask matches no image", (
            f"no image with stem {ref.stem!r} among the sources' records (the rows their readers left out, "
            "lateral views among them, are under excluded)"
        )
    sources = sorted({r.source for r in hits})
    if len(sources) > 1:
        return "lung mask matches images of several sources", f"stem {ref.stem!r} is in {', '.join(sources)}"
    taken = next((r.extra[REF_KEY] for r in hits if REF_KEY in r.extra), None)
    if taken is not None:
        return "second lung mask for one image", f"{hits[0].filename} already has {taken.item} ({taken.name})"
    for r in hits:  # one file listed twice by its source: the build keeps one of them
        r.extra[REF_KEY] = ref
    return None


def _excluded(items: list[Exclusion]) -> dict:
    return {
        "count": len(items),
        "by_reason": dict(Counter(e.reason for e in items)),
        "items": [asdict(e) for e in items],
    }


def finish_section(section: dict, later: list[Exclusion], records, order: list[int], split_of: dict) -> dict:
    """The report's ``lung_masks`` section: the join's, plus the masks left out when they were read
    (``later``), and what reached the dataset: masked images and patients per split."""
    items = [Exclusion(**e) for e in section["excluded"]["items"]] + later
    masked = [i for i in order if records[i].extra.get(NAME_KEY) not in (None, PREDICTED)]
    splits = ("train", "val", "test")
    joined = sum(1 for r in records if REF_KEY in r.extra)  # records given a mask by the join
    return {
        **section,
        "excluded": _excluded(items),
        "in_dataset": {
            "images": {s: sum(1 for i in masked if split_of[i] == s) for s in splits},
            "patients": {s: len({records[i].uid for i in masked if split_of[i] == s}) for s in splits},
            "by_set": dict(Counter(records[i].extra[NAME_KEY] for i in masked)),
            "masked_images_left_out_by_the_build": joined - len(later) - len(masked),
        },
    }


def strict_failure(excluded: list[Exclusion]) -> CovidnetError:
    e = excluded[0]
    reasons = ", ".join(f"{n} {reason}" for reason, n in Counter(x.reason for x in excluded).items())
    return CovidnetError(
        f"--strict: {len(excluded)} lung mask(s) left out ({reasons}); first: {e.item}: {e.reason} ({e.detail}); "
        "fix or remove them, or build without --strict"
    )


def lung_field(masks: np.ndarray, margin: float) -> np.ndarray:
    """Stored lung masks (B, S, S) uint8 -> (B, S, S) bool: the lung pixels (and the *ignore* ones, which lie
    over the lungs) dilated by ``round(margin * S)`` pixels (``dilate``).
    What the audit hides and counts as lung: a Grad-CAM map is coarse, and a mask's boundary uncertain by a
    few pixels, so a margin keeps a map that sits on the lung edge from being counted outside."""
    import torch

    lung = torch.from_numpy(np.ascontiguousarray(masks) >= IGNORE).float()[:, None]
    return dilate(lung, margin)[:, 0].numpy() > 0
