"""``covidnet data build``: sources -> records -> images checked, hashed and preprocessed once -> duplicates
removed -> patient-level split -> COVIDx label files, a table of records, a preprocessed store and a
report that says what was left out and why.

Guarantees, each checked before anything is written and recorded under ``checks`` in report.json:
no patient in two splits; no exact or near-duplicate image pair across splits; every record either in
a split or in the exclusions with its reason. The output directory appears complete or not at all:
everything is written to a temporary sibling and renamed into place at the end.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from multiprocessing import get_all_start_methods, get_context
from pathlib import Path

import numpy as np

from .. import __version__
from ..config import option
from ..contract import DEFAULT_SIZE, TOP_CROP, Contract
from ..errors import ConfigError, CovidnetError, UsageError
from ..imageio import image_shape
from .lungmasks import (
    LUNG,
    NAME_KEY,
    PREDICTED,
    REF_KEY,
    MaskReader,
    MaskSpec,
    finish_section,
    join_lung_masks,
    mask_problem,
    strict_failure,
)
from .records import CLASSES, LABELS, NEGATIVE_ONLY, Exclusion, Record, to_binary
from .severity import SCORES, check_offsets, join_severity
from .sources import COVIDX_SOURCE_ALIASES, READERS, official_key, read_source
from .store import IMAGES_FILE, INDEX_FILE, MASKS_FILE, RowFile, write_index

SPLITS = ("train", "val", "test")
PAEDIATRIC_AGE = 18  # years; below it a record is paediatric
PHASH_SIZE = 16  # 256-bit perceptual hash: on the real sources the closest distinct cross-source pair is
NEAR_DUP_BITS = 24  # 76 bits apart and true re-publications are <= 4 apart, so 24 leaves a wide margin
# Exclusions that are documented filters (what the user asked for); any other one fails --strict
FILTER_REASONS = {
    "lateral view",
    "view not frontal or unknown",
    "not an X-ray",
    "unlabelled",
    "finding not in COVIDx classes",
    "not normal, no opacity (excluded as in COVIDx)",
    "paediatric",
    "exact duplicate",
    "near duplicate",
    "not in the official split files",
    "patient also in the official test split",
    "patient also in another official split",
    "reaches COVIDx through another source",  # --cohen-rules reference
    # how the covidx, sirm and bimcv readers handle what a release or a sheet holds (see their docstrings)
    "negative label in a three-class file",
    "duplicate line",
    "image listed twice",
    "image in two official splits",
    "image not in the label files",
    "not from SIRM",
    "not a chest radiograph",
}


@dataclass
class SourceSpec:
    reader: str
    path: Path
    name: str

    @classmethod
    def parse(cls, text: str) -> SourceSpec:
        """``READER=PATH`` or ``READER:NAME=PATH`` (two folders of one layout under different names)."""
        if "=" not in text:
            raise UsageError(f"--source {text!r}: expected READER=PATH, e.g. cohen=/data/covid-chestxray-dataset")
        left, path = text.split("=", 1)
        reader, _, name = left.partition(":")
        return cls(reader.strip(), Path(path).expanduser(), (name or reader).strip())


@dataclass
class BuildConfig:
    sources: list[SourceSpec] = option(
        help="a source folder in its own layout; READER is one of: " + ", ".join(READERS) + " (repeatable)",
        flag="--source",
        metavar="READER[:NAME]=PATH",
    )
    out: Path = option(help="output folder (must not exist or be empty)")
    size: int = option(DEFAULT_SIZE, "side of the stored square images")
    top_crop: float = option(TOP_CROP, "fraction of rows removed at the top")
    val_fraction: float = option(0.1, "share of each class in val")
    test_fraction: float = option(0.1, "share of each class in test")
    seed: int = option(0, "seed of the patient-level split")
    split_files: list[tuple[str, Path]] = option(  # (split, COVIDx label file)
        help="reproduce an official COVIDx split from its label file (repeatable; the split is read from the file "
        "name unless given)",
        default_factory=list,
        flag="--split-file",
        metavar="[SPLIT=]FILE",
    )
    paediatric: str = option(
        "exclude",
        "children (age < 18, or a paediatric source such as kermany): exclude (default) or include",
        choices=("exclude", "include"),
    )
    workers: int = option(0, "processes for the images (default: every core)")
    strict: bool = option(
        False, "fail if any record is excluded for an error (not a filter), or any row of --severity is left out"
    )
    overwrite: bool = option(False, "replace --out if it exists")
    progress: bool = option(True, "no progress bar", flag="--quiet", negate=True)
    severity: Path | None = option(
        None,
        "join COVIDNet-S lung severity scores (filename, Geographic, Opacity; 0-8) to the images by file-name stem",
        metavar="FILE",
    )
    cohen_rules: str = option(
        "ours",
        "which cohen rows to keep: ours or reference (lindawangg/COVID-Net's "
        "create_COVIDx selection; see docs/readers-vs-torchxrayvision.md)",
        choices=("ours", "reference"),
    )
    split: str = option(
        "official",
        "covidx sources: keep the release's own train/val/test split (official) or "
        "draw one by patient as for any other source (patient)",
        choices=("official", "patient"),
    )
    lung_masks: list[MaskSpec] = option(
        help="join lung masks (0 background, 255 lung, 127 ignore; any format and size) to the images by "
        "file-name stem and store them beside the images; DIR is a folder or a .zip of masks, NAME labels the "
        "set in the index (repeatable; the first set wins where two outline one image)",
        default_factory=list,
        flag="--lung-masks",
        metavar="NAME=DIR",
    )
    lungs: Path | None = option(
        None,
        "segment every image without an annotated lung mask with this `covidnet lungs train` checkpoint (or its "
        "`covidnet export` .onnx, run by ONNX Runtime: faster on a CPU) and store the predicted masks (marked "
        "predicted in the index)",
        metavar="MODEL",
    )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["sources"] = [{"reader": s.reader, "path": str(s.path), "name": s.name} for s in self.sources]
        d["split_files"] = [[s, str(p)] for s, p in self.split_files]
        d["out"] = str(self.out)
        d["severity"] = str(self.severity) if self.severity else None
        d["lung_masks"] = [{"name": m.name, "path": str(m.path)} for m in self.lung_masks]
        d["lungs"] = str(self.lungs) if self.lungs else None
        return d

    @property
    def with_masks(self) -> bool:
        """Whether the store has a masks.npy beside its images."""
        return bool(self.lung_masks or self.lungs)

    @property
    def contract(self) -> Contract:
        """The preprocessing contract this build writes into its store."""
        return Contract(stored_size=self.size, top_crop=self.top_crop)

    @property
    def processes(self) -> int:
        """The workers this build runs (``workers``, or every core)."""
        return self.workers or os.cpu_count() or 1


def parse_split_file_arg(text: str) -> tuple[str, Path]:
    """``[SPLIT=]FILE``; without SPLIT the file name says it (train_COVIDx3.txt -> train)."""
    if "=" in text and text.split("=", 1)[0] in SPLITS:
        split, path = text.split("=", 1)
        return split, Path(path)
    name = Path(text).name.lower()
    for split in ("train", "val", "test"):
        if re.search(rf"(^|[^a-z]){split}", name):
            return split, Path(text)
    raise UsageError(
        f"--split-file {text}: cannot tell the split from the file name; write train=FILE, val=FILE or test=FILE"
    )


# --- image stage (runs in worker processes) -----------------------------------------------------------

_WORKER: dict = {}


def _init_worker(store_path: str, contract: Contract, masks_path: str | None = None) -> None:
    _WORKER["images"] = RowFile(Path(store_path), writable=True)  # pwrite: no page of it stays mapped
    _WORKER["contract"] = contract
    _WORKER["masks"] = RowFile(Path(masks_path), writable=True) if masks_path else None
    _WORKER["mask_reader"] = MaskReader()


def _process(task: tuple) -> tuple[int, str | None, str | None, bytes | None, tuple[str, str] | None]:
    """Read, hash and preprocess one image into row ``i`` of the store, and its lung mask, if it has one,
    into row ``i`` of the masks. Returns (i, error, file hash, perceptual hash, why the mask is left out)."""
    i, path, ref = task
    try:
        img = _WORKER["contract"].load(path)  # the one preprocessing path
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()  # exact duplicates: identical files
    except CovidnetError as e:
        return i, str(e), None, None, None
    _WORKER["images"].write(i, img)
    return i, None, digest, perceptual_hash(img), _process_mask(i, path, ref) if ref is not None else None


def _process_mask(i: int, path: str, ref) -> tuple[str, str] | None:
    """The image's lung mask through the image's geometry (``Contract.mask``) into row ``i`` of the masks;
    (reason, detail) when it is left out."""
    try:
        mask = _WORKER["mask_reader"].read(ref)
        shape = image_shape(path)
    except CovidnetError as e:
        return "unreadable lung mask", str(e)
    problem = mask_problem(mask, shape)
    if problem:
        return problem
    stored = _WORKER["contract"].mask(mask, shape)
    if not (stored == LUNG).any():
        return "empty lung mask", "no lung pixel is left after the contract's crop"
    _WORKER["masks"].write(i, stored)
    return None


def perceptual_hash(img: np.ndarray) -> bytes:
    """The 256-bit perceptual hash (imagehash's DCT pHash) of a stored image, packed: what near
    duplicates are found by, in the build and in the audit."""
    import imagehash
    from PIL import Image

    return np.packbits(imagehash.phash(Image.fromarray(img), hash_size=PHASH_SIZE).hash.flatten()).tobytes()


# --- grouping, dedup, split ---------------------------------------------------------------------------


class _UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def near_duplicate_pairs(hashes: np.ndarray, max_bits: int = NEAR_DUP_BITS, block: int = 2048) -> list[tuple[int, int]]:
    """Pairs (i < j) of packed perceptual hashes at Hamming distance <= ``max_bits``: exact, all pairs, as
    matrix products. For bit vectors x and y, Hamming(x, y) = |x| + |y| - 2 x.y, so one block of distances
    is one float32 matrix product of the unpacked bits (BLAS), exact for integers this small. A block pair
    holds a few ``block x block`` float32 arrays (16 MB each at 2048) and the search keeps only the packed
    hashes, so memory stays flat however many images it searches; the time is quadratic (BENCHMARKS.md
    gives it at 85,000 images)."""
    pairs = []
    n = len(hashes)
    hashes = np.ascontiguousarray(hashes, dtype=np.uint8)
    ones = np.bitwise_count(hashes).sum(1, dtype=np.int64).astype(np.float32)
    for a in range(0, n, block):
        x = np.unpackbits(hashes[a : a + block], axis=1).astype(np.float32)
        for b in range(a, n, block):
            y = np.unpackbits(hashes[b : b + block], axis=1).astype(np.float32)
            d = ones[a : a + block, None] + ones[None, b : b + block] - 2 * (x @ y.T)
            ii, jj = np.nonzero(d <= max_bits + 0.5)
            for i, j in zip(ii + a, jj + b):
                if i < j:
                    pairs.append((int(i), int(j)))
    return pairs


def _stratified_split(groups: dict[int, list[int]], labels: list[str], cfg: BuildConfig) -> dict[int, str]:
    """Assign whole groups to splits so each label's test and val shares come close to the fractions.
    A group's label for stratification is its rarest class (a patient with any COVID-19 image counts
    as COVID-19)."""
    rng = np.random.default_rng(cfg.seed)
    rank = {c: k for k, c in enumerate(reversed(CLASSES))}  # COVID-19 first: the rarest class decides
    rank[NEGATIVE_ONLY] = len(rank)  # a binary release's negative: after every class
    by_label: dict[str, list[int]] = defaultdict(list)
    for g, members in sorted(groups.items()):
        by_label[min((labels[m] for m in members), key=rank.get)].append(g)
    assign = {}
    for _label, gs in sorted(by_label.items()):
        gs = [gs[k] for k in rng.permutation(len(gs))]
        total = sum(len(groups[g]) for g in gs)
        quota = {"test": cfg.test_fraction * total, "val": cfg.val_fraction * total}
        filled = {"test": 0, "val": 0}
        for g in gs:
            split = next((s for s in ("test", "val") if filled[s] + len(groups[g]) / 2 <= quota[s]), "train")
            if split != "train":
                filled[split] += len(groups[g])
            assign[g] = split
    return assign


def _read_split_files(split_files: list[tuple[str, Path]]) -> dict[str, list[dict]]:
    rows: dict[str, list[dict]] = defaultdict(list)
    for split, path in split_files:
        if not path.is_file():
            raise ConfigError(f"{path}: split file not found")
        for n, line in enumerate(path.read_text().splitlines(), start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) > 4 and parts[-2] in (
                *LABELS,
                "positive",
            ):  # COVIDx 7/8: 'COVID 70 COVID(70).png COVID-19 sirm'
                parts = [" ".join(parts[:-3]), *parts[-3:]]
            if len(parts) < 3:
                raise ConfigError(f"{path}:{n}: expected 'patientid filename label [source]', got {line!r}")
            rows[split].append(
                {
                    "patient_id": parts[0],
                    "filename": parts[1],
                    "label": parts[2],
                    "source": parts[3] if len(parts) > 3 else "",
                    "file": str(path),
                    "line": n,
                }
            )
    return rows


# --- the build ----------------------------------------------------------------------------------------


def build_dataset(cfg: BuildConfig) -> dict:
    """Build a dataset as ``cfg`` says; returns the report (also written to ``cfg.out/report.json``)."""
    t0 = time.perf_counter()
    segmenter = _check_config(cfg)  # the lung model of --lungs, opened once

    # 1. read every source; a missing folder or metadata file stops here, before any work
    records: list[Record] = []
    exclusions: list[Exclusion] = []
    notes: list[str] = []
    anomalies: list[Exclusion] = []
    for spec in cfg.sources:
        options = {"rules": cfg.cohen_rules} if spec.reader == "cohen" else {}
        data = read_source(
            spec.reader, spec.path.expanduser().absolute(), spec.name, **options
        )  # records.csv stays valid from anywhere
        records += data.records
        exclusions += data.exclusions
        notes += data.notes
        anomalies += data.anomalies
    severity, masks = _join_targets(cfg, records)

    def drop(i: int, reason: str, detail: str) -> None:
        r = records[i]
        exclusions.append(Exclusion(r.source, str(r.path), reason, detail))
        alive[i] = False

    alive = [True] * len(records)
    # 2. population filter: children as "normal" controls is the best-known shortcut in this literature
    if cfg.paediatric == "exclude":
        for i, r in enumerate(records):
            if r.extra.get("population") == "paediatric" or (r.age is not None and r.age < PAEDIATRIC_AGE):
                drop(
                    i,
                    "paediatric",
                    f"{'source is paediatric' if r.age is None else f'age {r.age:g}'}; --paediatric include keeps it",
                )

    # 3. the same (non-numeric) patient id in two sources with different labels
    by_pid: dict[str, set[int]] = defaultdict(set)
    for i, r in enumerate(records):
        if alive[i] and not r.patient_id.isdigit():  # plain integers are per-source counters, not identities
            by_pid[r.patient_id].add(i)
    for pid, idx in by_pid.items():
        srcs = {records[i].source for i in idx}
        labels = {records[i].label for i in idx}
        if NEGATIVE_ONLY in labels:  # a binary release's negative agrees with normal and with pneumonia
            labels = {to_binary(x) for x in labels}
        if len(srcs) > 1 and len(labels) > 1:
            for i in idx:
                drop(
                    i,
                    "patient in two sources with different labels",
                    f"patient {pid!r} is "
                    + ", ".join(sorted(f"{records[j].label} in {records[j].source}" for j in idx)),
                )

    # 4. read, hash and preprocess every image once, in parallel, into a store in a temporary folder
    out = cfg.out
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    try:
        report = _build_into(
            tmp, cfg, records, alive, exclusions, notes, drop, t0, severity, anomalies, masks, segmenter
        )
        if out.exists():
            shutil.rmtree(out)  # only reachable with --overwrite (checked at the start)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp made it private; the dataset is not
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return report


def _join_targets(cfg: BuildConfig, records: list[Record]) -> tuple[dict | None, dict | None]:
    """The severity file's scores and the lung masks joined to the records by stem (their report sections),
    before any image work: under --strict a row or mask left out stops the build at once."""
    severity = masks = None
    if cfg.severity:
        severity, rejected = join_severity(Path(cfg.severity), records, {s.name: s.reader for s in cfg.sources})
        if cfg.strict and rejected:
            e = rejected[0]
            raise CovidnetError(
                f"--strict: {len(rejected)} row(s) of the severity file left out "
                f"({_reasons(severity)}); first: {e.item}: {e.reason} ({e.detail})"
            )
    if cfg.lung_masks:
        masks, rejected = join_lung_masks(cfg.lung_masks, records)
        if cfg.strict and rejected:
            raise strict_failure(rejected)
    return severity, masks


def _check_config(cfg: BuildConfig):
    if not cfg.sources:
        raise UsageError("give at least one --source READER=PATH")
    names = [s.name for s in cfg.sources]
    if len(set(names)) != len(names):
        raise UsageError(f"two sources named alike ({', '.join(names)}); name them with READER:NAME=PATH")
    if cfg.size < 32:
        raise ConfigError(f"--size must be at least 32, not {cfg.size}")
    if not (0 <= cfg.val_fraction < 1 and 0 <= cfg.test_fraction < 1 and cfg.val_fraction + cfg.test_fraction < 1):
        raise ConfigError("--val-fraction and --test-fraction must be in [0, 1) and sum to less than 1")
    _ = cfg.contract  # a bad --top-crop fails here, before any work
    if cfg.paediatric not in ("exclude", "include"):
        raise ConfigError(f"--paediatric must be exclude or include, not {cfg.paediatric!r}")
    if cfg.split not in ("official", "patient"):
        raise ConfigError(f"--split must be official or patient, not {cfg.split!r}")
    names = [m.name for m in cfg.lung_masks]
    if len(set(names)) != len(names):
        raise UsageError(f"two --lung-masks sets named alike ({', '.join(names)}); give each its own NAME")
    for m in cfg.lung_masks:
        if not m.path.exists():
            raise ConfigError(f"{m.path}: not found; --lung-masks {m.name}= needs a folder or .zip of mask images")
    if cfg.lungs and not Path(cfg.lungs).is_file():
        raise ConfigError(
            f"{cfg.lungs}: not found; --lungs takes a `covidnet lungs train` best.pt or its `covidnet export` .onnx"
        )
    segmenter = None
    if cfg.lungs:  # a classifier, or a segmenter of another framing, fails here, before any image is read
        from ..lungs.fill import open_segmenter_for  # torch only for a .pt segmenter

        segmenter = open_segmenter_for(cfg.lungs, cfg.contract, cfg.processes)
    if cfg.out.exists() and any(cfg.out.iterdir()) and not cfg.overwrite:
        raise ConfigError(f"{cfg.out}: exists and is not empty; choose another --out or pass --overwrite")
    cfg.out.parent.mkdir(parents=True, exist_ok=True)
    return segmenter


def _reasons(section: dict) -> str:
    return ", ".join(f"{n} {reason}" for reason, n in section["excluded"]["by_reason"].items())


def _build_into(
    tmp: Path, cfg: BuildConfig, records, alive, exclusions, notes, drop, t0, severity, anomalies, masks, segmenter
) -> dict:
    todo = [i for i in range(len(records)) if alive[i]]
    scratch = tmp / "scratch.npy"
    slot, digests, phash, images_per_s, masks_later = _read_images(scratch, cfg, records, todo, drop)
    if cfg.strict and masks_later:
        raise strict_failure(masks_later)
    # 5. exact duplicates anywhere, near duplicates across sources: keep the first (source order, path)
    kept, links, uf = _drop_duplicates(records, todo, alive, digests, phash, drop)
    _carry_severity(records, links)
    # 6. groups that must share a split, then the split
    _group_patients(records, kept, links, uf)
    split_of, official = _assign_splits(cfg, records, kept, uf, drop)
    kept = [i for i in kept if alive[i]]
    # 7. checks, then the outputs
    checks = _checks(records, kept, split_of, phash, digests)
    _refuse_failures(cfg, checks, exclusions)
    order = sorted(kept, key=lambda i: (SPLITS.index(split_of[i]), records[i].source, str(records[i].path)))
    _write_store(tmp, cfg, scratch, slot, order, records)
    predicted = _predict_masks(tmp, cfg, records, order, segmenter) if segmenter else None
    risk, _ = check_offsets([records[i] for i in order])  # sets offset_days, for the index
    write_index(tmp / INDEX_FILE, [(records[i], split_of[i]) for i in order])
    _write_label_files(tmp, records, order, split_of)
    _write_records_table(tmp / "records.csv", records, alive, split_of, exclusions)
    report = _report(cfg, records, order, split_of, exclusions, notes, checks, official, images_per_s, t0)
    report["severity"] = _severity_in_splits(severity, records, order, split_of) if severity else None
    report["risk"] = risk
    report["lung_masks"] = _masks_section(masks, masks_later, predicted, records, order, split_of)
    report["anomalies"] = {
        "count": len(anomalies),
        "by_reason": dict(Counter(a.reason for a in anomalies)),
        "items": [asdict(a) for a in anomalies],
    }  # kept, though the source gets them wrong
    (tmp / "report.json").write_text(json.dumps(report, indent=2))
    cfg.contract.write(tmp)  # what training reads back, and every checkpoint and export carries
    (tmp / "config.json").write_text(
        json.dumps({"command": "data build", "version": __version__, **cfg.to_dict()}, indent=2)
    )
    return report


def _read_images(
    scratch: Path, cfg: BuildConfig, records, todo: list[int], drop
) -> tuple[dict[int, int], dict[int, str], dict[int, bytes], float]:
    """Read, hash and preprocess every image of ``todo`` once, in parallel, into row ``slot[i]`` of the
    scratch store; an unreadable one is dropped. Returns (slot, file hashes, perceptual hashes, images/s)."""
    RowFile.create(scratch, len(todo), cfg.size).close()
    scratch_masks = None
    if any(REF_KEY in records[i].extra for i in todo):
        scratch_masks = str(scratch.with_name("scratch-masks.npy"))
        RowFile.create(Path(scratch_masks), len(todo), cfg.size).close()
    slot = {i: k for k, i in enumerate(todo)}
    digests: dict[int, str] = {}
    phash: dict[int, bytes] = {}
    workers = cfg.processes
    t_img = time.perf_counter()
    tasks = [(slot[i], str(records[i].path), records[i].extra.get(REF_KEY)) for i in todo]
    results = []
    if workers == 1:
        _init_worker(str(scratch), cfg.contract, scratch_masks)
        iterator = map(_process, tasks)
        results = _consume(iterator, len(tasks), cfg.progress)
        _WORKER.pop("images").close()
        if _WORKER.get("masks"):
            _WORKER.pop("masks").close()
    else:
        # fork where the platform has it: workers start at once with the parent's imports; they run no
        # torch code, so forking a process that imported torch is safe here
        method = "fork" if "fork" in get_all_start_methods() else "spawn"
        with get_context(method).Pool(workers, _init_worker, (str(scratch), cfg.contract, scratch_masks)) as pool:
            results = _consume(pool.imap_unordered(_process, tasks, chunksize=8), len(tasks), cfg.progress)
    images_per_s = len(tasks) / max(time.perf_counter() - t_img, 1e-9)
    masks_later: list[Exclusion] = []
    for k, error, digest, ph, mask_problem_ in results:
        i = todo[k]
        if error:
            drop(i, "unreadable image", error)
            continue
        digests[i], phash[i] = digest, ph
        ref = records[i].extra.get(REF_KEY)
        if mask_problem_:
            masks_later.append(Exclusion("lung masks", ref.item, *mask_problem_))
        elif ref is not None:
            records[i].extra[NAME_KEY] = ref.name  # stored in row slot[i] of the scratch masks
    return slot, digests, phash, images_per_s, masks_later


def _drop_duplicates(
    records, todo: list[int], alive, digests, phash, drop
) -> tuple[list[int], list[tuple[int, int]], _UnionFind]:
    """Exact duplicates anywhere and near duplicates across sources are dropped, the first (source order,
    path) kept; near duplicates within a source are both kept and joined so they share a split. Returns (kept,
    links (kept, dropped duplicate), a union-find over the records with those joins)."""
    kept = [i for i in todo if alive[i]]
    links: list[tuple[int, int]] = []  # (kept, dropped duplicate): the dropped one's patient joins the kept one
    first_by_digest: dict[str, int] = {}
    for i in kept:
        j = first_by_digest.setdefault(digests[i], i)
        if j != i:
            same = records[j].path == records[i].path
            drop(
                i,
                "exact duplicate",
                "the same file, listed again" if same else f"identical file to {records[j].source}:{records[j].path}",
            )
            links.append((j, i))
    kept = [i for i in kept if alive[i]]
    hashes = (
        np.frombuffer(b"".join(phash[i] for i in kept), dtype=np.uint8).reshape(len(kept), -1)
        if kept
        else np.zeros((0, 32), np.uint8)
    )
    uf = _UnionFind(len(records))
    for a, b in near_duplicate_pairs(hashes):
        i, j = kept[a], kept[b]
        if not (alive[i] and alive[j]):
            continue
        if records[i].source != records[j].source:
            drop(
                j,
                "near duplicate",
                f"perceptual hash within {NEAR_DUP_BITS}/{PHASH_SIZE**2} bits of {records[i].source}:{records[i].path}",
            )
            links.append((i, j))
        else:
            uf.union(i, j)  # same source, e.g. one image under two patient ids: keep both, never split them
    kept = [i for i in kept if alive[i]]
    return kept, links, uf


def _carry_severity(records, links: list[tuple[int, int]]) -> None:
    """A dropped duplicate's severity scores go with the copy that is kept (when that one has none)."""
    for i, j in links:
        if all(s in records[j].extra for s in SCORES) and not any(s in records[i].extra for s in SCORES):
            records[i].extra.update({s: records[j].extra[s] for s in SCORES})


def _group_patients(records, kept: list[int], links: list[tuple[int, int]], uf: _UnionFind) -> None:
    """Join in ``uf`` the records that must share a split: same patient (per source), same non-numeric id
    across sources, and the patient of a dropped duplicate with the copy that is kept."""
    first_of: dict[str, int] = {}
    for i in kept:
        for key in (records[i].uid,) + (
            (f"id:{records[i].patient_id}",) if not records[i].patient_id.isdigit() else ()
        ):
            uf.union(i, first_of.setdefault(key, i))
    for i, j in links:  # one image in two places means one person: keep their other images together
        if records[j].uid in first_of:
            uf.union(i, first_of[records[j].uid])


def _refuse_failures(cfg: BuildConfig, checks: dict, exclusions: list[Exclusion]) -> None:
    """Stop before writing if a check failed (a bug, not bad input: never write a dataset that breaks its own
    guarantees), or, under --strict, if a record was excluded for an error rather than a filter."""
    failed = [k for k, v in checks.items() if not v["passed"]]
    if failed:
        raise RuntimeError(f"dataset checks failed: {failed}")
    strict_failures = [e for e in exclusions if e.reason not in FILTER_REASONS]
    if cfg.strict and strict_failures:
        e = strict_failures[0]
        raise CovidnetError(
            f"--strict: {len(strict_failures)} record(s) excluded for errors; first: {e.item}: {e.reason} ({e.detail})"
        )


def _write_store(tmp: Path, cfg: BuildConfig, scratch: Path, slot: dict[int, int], order: list[int], records) -> None:
    """The images of ``order``, in that order, from the scratch store into the dataset's store, and their
    lung masks into ``masks.npy`` (rows aligned; zeros where an image has none); the scratch files are
    removed."""
    _copy_rows(scratch, tmp / IMAGES_FILE, cfg.size, [slot[i] for i in order])
    scratch_masks = scratch.with_name("scratch-masks.npy")
    if cfg.with_masks:
        masked = [slot[i] if records[i].extra.get(NAME_KEY) else None for i in order]
        _copy_rows(scratch_masks if scratch_masks.exists() else None, tmp / MASKS_FILE, cfg.size, masked)
    scratch_masks.unlink(missing_ok=True)


def _copy_rows(scratch: Path | None, path: Path, size: int, slots: list[int | None]) -> None:
    """A new row file at ``path`` whose row k is row ``slots[k]`` of ``scratch`` (zeros for None); a row at
    a time, so memory stays flat in the number of images; ``scratch`` is removed."""
    source = RowFile(scratch) if scratch else None
    out = RowFile.create(path, len(slots), size)
    buf = np.empty((1, size, size), np.uint8)
    for row, k in enumerate(slots):
        if k is not None:
            out.write(row, source.read([k], buf)[0])
    os.fsync(out.fd)
    out.close()
    if source is not None:
        source.close()
        scratch.unlink()


def _predict_masks(tmp: Path, cfg: BuildConfig, records, order: list[int], segmenter) -> dict:
    """``--lungs CKPT``: masks for the stored images without an annotated one, drawn by ``segmenter`` (the
    model ``_check_config`` opened) and written into their rows of ``masks.npy``; those records are marked
    predicted (the index says so)."""
    from ..lungs.fill import segment_store_rows  # torch only for a .pt segmenter

    rows = [row for row, i in enumerate(order) if not records[order[row]].extra.get(NAME_KEY)]
    info = segment_store_rows(segmenter, tmp, np.array(rows, dtype=np.int64), cfg.progress, cfg.processes)
    for row in rows:
        records[order[row]].extra[NAME_KEY] = PREDICTED
    return info


def _masks_section(masks, later, predicted, records, order, split_of) -> dict | None:
    """The report's ``lung_masks``: the annotated sets' join and what reached the store, and the predicted
    masks of ``--lungs``."""
    if masks is None and predicted is None:
        return None
    section = finish_section(masks or {"sets": [], "excluded": {"items": []}}, later, records, order, split_of)
    section["predicted"] = predicted
    return section


def _write_label_files(tmp: Path, records, order: list[int], split_of: dict[int, str]) -> None:
    """The COVIDx label files: ``train.txt``, ``val.txt``, ``test.txt``."""
    for split in SPLITS:
        with open(tmp / f"{split}.txt", "w") as f:
            for i in order:
                if split_of[i] == split:
                    r = records[i]
                    f.write(f"{r.patient_id} {r.filename} {r.label} {r.source}\n")


def _severity_in_splits(section: dict, records, order, split_of) -> dict:
    """The severity section with what reached the dataset: scored images and patients per split."""
    scored = [i for i in order if "geographic" in records[i].extra]
    return {
        **section,
        "in_dataset": {
            "images": {s: sum(1 for i in scored if split_of[i] == s) for s in SPLITS},
            "patients": {s: len({records[i].uid for i in scored if split_of[i] == s}) for s in SPLITS},
            "scored_images_left_out_by_the_build": section["images_scored"] - len(scored),
        },
    }


def _consume(iterator, total: int, progress: bool) -> list:
    if progress:
        import sys

        from tqdm import tqdm

        iterator = tqdm(iterator, total=total, desc="images", unit="img", file=sys.stderr)
    return list(iterator)


def _assign_splits(cfg, records, kept, uf, drop) -> tuple[dict[int, str], dict]:
    groups: dict[int, list[int]] = defaultdict(list)
    for i in kept:
        groups[uf.find(i)].append(i)
    labels = [r.label for r in records]
    official: dict = {}
    # a released COVIDx folder names its own split (the covidx reader puts it on each record)
    own = {
        i: records[i].extra["official_split"]
        for i in kept
        if cfg.split == "official" and records[i].extra.get("official_split") in SPLITS
    }
    if not cfg.split_files and not own:
        by_group = _stratified_split(groups, labels, cfg)
        return {i: by_group[uf.find(i)] for i in kept}, official

    listed = _read_split_files(cfg.split_files) if cfg.split_files else {}
    named, missing, disagree, loose = _match_split_files(records, kept, listed)
    for i, split in own.items():  # the release's own split, test first as well
        if i not in named or SPLITS.index(split) > SPLITS.index(named[i]):
            named[i] = split
    group_split = _group_splits(named, uf)
    split_of, leaked = _follow_group_splits(cfg, kept, named, group_split, uf, drop)
    # the official lists have no validation split: carve one from train by patient
    val_given = bool(listed.get("val")) or "val" in own.values()
    if cfg.val_fraction and not val_given:
        _carve_val(cfg, groups, group_split, split_of, labels)
    _draw_unlisted(cfg, groups, group_split, split_of, labels)
    official = _official_summary(cfg, records, listed, named, own, missing, disagree, loose, leaked, val_given)
    return split_of, official


def _match_split_files(
    records, kept: list[int], listed: dict[str, list[dict]]
) -> tuple[dict[int, str], list[dict], list[str], int]:
    """The split each listed image is named in, by file-name stem or else by ``official_key``. Returns
    (named, rows that match no image, label disagreements, rows matched only by ``official_key``)."""
    by_stem: dict[str, list[int]] = defaultdict(list)
    by_key: dict[str, list[int]] = defaultdict(list)  # names that differ only as official_key says
    for i in kept:
        by_stem[records[i].stem].append(i)
        by_key[official_key(records[i].stem)].append(i)
    named: dict[int, str] = {}
    missing: list[dict] = []
    disagree: list[str] = []
    loose = 0
    for split in ("test", "val", "train"):  # test first: a conflict never moves an image out of test
        for row in listed.get(split, []):
            hits = by_stem.get(Path(row["filename"]).stem) or by_key.get(official_key(row["filename"]), [])
            loose += bool(hits) and Path(row["filename"]).stem not in by_stem
            src = COVIDX_SOURCE_ALIASES.get(row["source"], row["source"])
            if len(hits) > 1 and src:
                hits = [i for i in hits if records[i].source == src] or hits
            if not hits:
                missing.append(row)
            for i in hits:
                named.setdefault(i, split)
                ours = records[i].label if row["label"] in CLASSES else to_binary(records[i].label)
                if ours != row["label"]:
                    disagree.append(
                        f"{row['file']}:{row['line']}: {row['filename']} is {row['label']} there, {ours} here"
                    )
    return named, missing, disagree, loose


def _group_splits(named: dict[int, str], uf: _UnionFind) -> dict[int, str]:
    """A group goes where its listed images say; a group listed in two splits follows test, then val."""
    group_split: dict[int, str] = {}
    for i, split in named.items():
        g = uf.find(i)
        prev = group_split.get(g)
        if prev is None or SPLITS.index(split) > SPLITS.index(prev):
            group_split[g] = split
    return group_split


def _follow_group_splits(
    cfg, kept: list[int], named: dict[int, str], group_split: dict[int, str], uf: _UnionFind, drop
) -> tuple[dict[int, str], list[int]]:
    """Each image in its group's split. A listed image whose patient is in another split is dropped (leaked);
    an unlisted one follows its patient's split, or is dropped under --split-file. Returns (split_of, leaked)."""
    split_of = {}
    leaked = []
    for i in kept:
        g = uf.find(i)
        if i in named and named[i] != group_split[g]:
            drop(
                i,
                "patient also in the official test split"
                if group_split[g] == "test"
                else "patient also in another official split",
                f"listed in {named[i]}, but its patient is in {group_split[g]}: kept out so no patient crosses splits",
            )
            leaked.append(i)
        elif i in named or (g in group_split and not cfg.split_files):  # unlisted: follows its patient's split
            split_of[i] = group_split[g]
        elif cfg.split_files:
            drop(i, "not in the official split files", "its image is named in none of --split-file")
    return split_of, leaked


def _carve_val(
    cfg, groups: dict[int, list[int]], group_split: dict[int, str], split_of: dict[int, str], labels
) -> None:
    """Move a val share of the listed groups' train images into val, by patient (in ``split_of``)."""
    train_groups = {g: [i for i in m if split_of.get(i) == "train"] for g, m in groups.items() if g in group_split}
    train_groups = {g: m for g, m in train_groups.items() if m}
    sub = BuildConfig(sources=cfg.sources, out=cfg.out, val_fraction=cfg.val_fraction, test_fraction=0.0, seed=cfg.seed)
    for g, split in _stratified_split(train_groups, labels, sub).items():
        for i in train_groups[g]:
            split_of[i] = split


def _draw_unlisted(
    cfg, groups: dict[int, list[int]], group_split: dict[int, str], split_of: dict[int, str], labels
) -> None:
    """The other sources' patients (no list names them): drawn by patient as without official lists (in
    ``split_of``); under --split-file they were left out instead."""
    free = {g: m for g, m in groups.items() if g not in group_split}
    if free and not cfg.split_files:
        by_group = _stratified_split(free, labels, cfg)
        for g, m in free.items():
            for i in m:
                split_of[i] = by_group[g]


def _official_summary(cfg, records, listed, named, own, missing, disagree, loose, leaked, val_given) -> dict:
    """The report's ``official_split`` section: what the official lists held and what was matched."""
    by_source: dict[str, Counter] = defaultdict(Counter)
    for i, split in named.items():
        by_source[records[i].source][split] += 1
    release_files = sorted(
        {records[i].extra["label_file"].rsplit(":", 1)[0] for i in own if records[i].extra.get("label_file")}
    )
    return {
        "files": [[s, str(p)] for s, p in cfg.split_files],
        "release_label_files": release_files,  # a covidx source's own train/val/test.txt
        "rows": {s: len(v) for s, v in listed.items()},
        "matched": {s: sum(1 for i, sp in named.items() if sp == s) for s in SPLITS},
        "matched_by_source": {src: {s: c[s] for s in SPLITS} for src, c in sorted(by_source.items())},
        "matched_by_normalised_name": loose,  # rows matched only by official_key ('COVID(63)' = 'COVID-63')
        "missing_count": len(missing),
        "missing_by_source": dict(Counter(m["source"] or "(none)" for m in missing)),
        "missing": [f"{m['file']}:{m['line']}: {m['filename']}" for m in missing],
        "label_disagreements": disagree,  # the official list's label differs from what the source says
        "leakage": {"patients": len({records[i].uid for i in leaked}), "images_left_out": len(leaked)},
        "val": "from the official lists"
        if val_given
        else ("carved from train by patient" if cfg.val_fraction else "none"),
    }


def _checks(records, kept, split_of, phash, digests) -> dict:
    patient_splits: dict[str, set[str]] = defaultdict(set)
    for i in kept:
        patient_splits[records[i].uid].add(split_of[i])
    crossing_patients = sorted(p for p, s in patient_splits.items() if len(s) > 1)
    digest_splits: dict[str, set[str]] = defaultdict(set)
    for i in kept:
        digest_splits[digests[i]].add(split_of[i])
    crossing_exact = sum(1 for s in digest_splits.values() if len(s) > 1)
    hashes = (
        np.frombuffer(b"".join(phash[i] for i in kept), dtype=np.uint8).reshape(len(kept), -1)
        if kept
        else np.zeros((0, 32), np.uint8)
    )
    crossing_near = [
        (kept[a], kept[b]) for a, b in near_duplicate_pairs(hashes) if split_of[kept[a]] != split_of[kept[b]]
    ]
    return {
        "no_patient_in_two_splits": {"passed": not crossing_patients, "violations": crossing_patients[:20]},
        "no_exact_duplicate_across_splits": {"passed": crossing_exact == 0, "violations": crossing_exact},
        "no_near_duplicate_across_splits": {
            "passed": not crossing_near,
            "violations": len(crossing_near),
            "threshold_bits": NEAR_DUP_BITS,
            "hash_bits": PHASH_SIZE**2,
        },
        "every_record_accounted_for": {"passed": all(i in split_of for i in kept), "violations": 0},
    }


def _write_records_table(path: Path, records, alive, split_of, exclusions) -> None:
    reason = {e.item: e for e in exclusions}
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "patient_id",
                "filename",
                "path",
                "label",
                "source",
                "view",
                "age",
                "sex",
                "split",
                "excluded_reason",
                "excluded_detail",
            ]
        )
        for i, r in enumerate(records):
            e = reason.get(str(r.path)) if not alive[i] else None
            w.writerow(
                [
                    r.patient_id,
                    r.filename,
                    str(r.path),
                    r.label,
                    r.source,
                    r.view or "",
                    "" if r.age is None else f"{r.age:g}",
                    r.sex or "",
                    split_of.get(i, "") if alive[i] else "",
                    e.reason if e else "",
                    e.detail if e else "",
                ]
            )


def _report(cfg, records, order, split_of, exclusions, notes, checks, official, images_per_s, t0) -> dict:
    labels = LABELS if any(records[i].label == NEGATIVE_ONLY for i in order) else CLASSES
    counts: dict = {s: {c: {} for c in labels} for s in SPLITS}
    for i in order:
        r = records[i]
        cell = counts[split_of[i]][r.label]
        cell[r.source] = cell.get(r.source, 0) + 1
    totals = {s: {c: sum(v.values()) for c, v in counts[s].items()} for s in SPLITS}
    return {
        "version": __version__,
        "n_records": len(records),  # records the readers produced (rows they dropped are under "excluded")
        "n_images": len(order),
        "n_patients": len({records[i].uid for i in order}),
        "size": cfg.size,
        "counts": counts,
        "totals": totals,
        "excluded": {
            "count": len(exclusions),
            "by_reason": dict(Counter(e.reason for e in exclusions)),
            "by_source": dict(Counter(e.source for e in exclusions)),
            "items": [asdict(e) for e in exclusions],
        },
        "checks": checks,
        "official_split": official or None,
        "notes": notes,
        "images_per_s": round(images_per_s, 1),
        "seconds": round(time.perf_counter() - t0, 2),
    }
