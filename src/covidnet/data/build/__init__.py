"""``covidnet data build``: sources -> records -> images checked, hashed and preprocessed once -> duplicates
removed -> patient-level split -> COVIDx label files, a table of records, a preprocessed store and a
report that says what was left out and why.

Guarantees, each checked before anything is written and recorded under ``checks`` in report.json:
no patient in two splits; no exact or near-duplicate image pair across splits; every record either in
a split or in the exclusions with its reason. The output directory appears complete or not at all:
everything is written to a temporary sibling and renamed into place at the end.

Here is ``build_dataset``, the order of the stages; each stage has its module: ``config`` (what is asked
for), ``images`` (read, hash, preprocess, store), ``dedup`` (exact and near duplicates), ``split`` (patient
groups, the split), ``lungs`` (predicted lung masks), ``outputs`` (checks, label files, records.csv,
report.json).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import asdict
from pathlib import Path

from ... import __version__
from ...errors import ConfigError, CovidnetError
from ..lungmasks import join_lung_masks, strict_failure
from ..records import NEGATIVE_ONLY, PAEDIATRIC_AGE, Exclusion, Record, to_binary
from ..severity import check_offsets, join_severity
from ..sources import read_source
from ..store import INDEX_FILE, write_index
from .config import FILTER_REASONS, SPLITS, BuildConfig, SourceSpec, check_config, parse_split_file_arg
from .dedup import NEAR_DUP_BITS, PHASH_SIZE, carry_severity, drop_duplicates, near_duplicate_pairs, perceptual_hash
from .images import read_images, write_store
from .lungs import StoreSegmenter, check_segmenter, masks_section, predict_masks
from .outputs import (
    build_report,
    refuse_failures,
    run_checks,
    severity_in_splits,
    write_label_files,
    write_records_table,
)
from .split import assign_splits, group_patients

__all__ = [
    "FILTER_REASONS",
    "NEAR_DUP_BITS",
    "PAEDIATRIC_AGE",
    "PHASH_SIZE",
    "SPLITS",
    "BuildConfig",
    "SourceSpec",
    "StoreSegmenter",
    "build_dataset",
    "check_config",
    "near_duplicate_pairs",
    "parse_split_file_arg",
    "perceptual_hash",
]


def build_dataset(cfg: BuildConfig, segmenter: StoreSegmenter | None = None) -> dict:
    """Build a dataset as ``cfg`` says; returns the report (also written to ``cfg.out/report.json``).
    ``segmenter``: with ``cfg.lungs``, that model opened by the caller
    (``covidnet.load(cfg.lungs, threads=segmenter_threads(cfg.processes, cfg.lungs))``), which draws the masks the
    images have not got; it is checked against the build's contract before any work."""
    t0 = time.perf_counter()
    _check_config(cfg, segmenter)
    _remove_leftovers(cfg.out)

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
    # 2. a file name that is not UTF-8 text (bytes from another system's encoding) cannot be written to
    # index.csv, the label files or records.csv: left out, named by its path (escaped in report.json)
    for i in [i for i, r in enumerate(records) if not _utf8(str(r.path))]:
        drop(i, "file name not UTF-8", f"{ascii(records[i].path.name)[1:-1]}: rename it to UTF-8 text to keep it")
    # then the population filter: children as "normal" controls is the best-known shortcut in this literature
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
        old = _swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old)
    return report


LEFTOVER = r"\.{name}\.(building|replaced)-[A-Za-z0-9_]+"  # mkdtemp's folders beside --out


def _remove_leftovers(out: Path) -> None:
    """The folders a build of ``out`` killed before its end left beside it (its ``.OUT.building-*``, and
    the ``.OUT.replaced-*`` holding an overwritten store), removed, in one line on stderr. Only these names:
    a build running at the same time into the same ``out`` would lose its own."""
    pattern = re.compile(LEFTOVER.format(name=re.escape(out.name)))
    found = sorted(p for p in out.parent.iterdir() if pattern.fullmatch(p.name) and p.is_dir() and not p.is_symlink())
    for p in found:
        shutil.rmtree(p)
    if found:
        print(
            f"covidnet: removed {len(found)} unfinished build folder(s) left by an interrupted build: "
            + ", ".join(str(p) for p in found),
            file=sys.stderr,
        )


def _swap_in(tmp: Path, out: Path) -> Path | None:
    """``tmp`` renamed to ``out``. An existing ``out`` (only with --overwrite) is swapped with ``tmp`` in one
    step where the system can (Linux's ``renameat2``): ``out`` is the old store or the new one at every
    instant. Elsewhere the old one is renamed aside to ``.OUT.replaced-*`` first, then the new one in: killed
    between the two, neither is at ``out`` (both stay whole beside it). Returns the folder now holding the
    old store, for the caller to remove."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp made it private; the dataset is not
    if not out.exists():
        os.replace(tmp, out)
        return None
    if _exchange(tmp, out):
        return tmp
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.replaced-", dir=out.parent))
    os.replace(out, old)  # a folder renamed onto an empty one
    os.replace(tmp, out)
    return old


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (``renameat2(RENAME_EXCHANGE)``); False where the system or the file
    system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)  # glibc 2.28 and later
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a byte of a non-UTF-8 name, kept by Python as a lone surrogate
        return False
    return True


def _check_config(cfg: BuildConfig, segmenter: StoreSegmenter | None) -> None:
    """The config, the segmenter and the output folder, before anything is read or written."""
    check_config(cfg)
    check_segmenter(cfg, segmenter)  # a segmenter of another framing fails here, before any image is read
    if cfg.out.exists() and any(cfg.out.iterdir()) and not cfg.overwrite:
        raise ConfigError(f"{cfg.out}: exists and is not empty; choose another --out or pass --overwrite")
    cfg.out.parent.mkdir(parents=True, exist_ok=True)


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


def _reasons(section: dict) -> str:
    return ", ".join(f"{n} {reason}" for reason, n in section["excluded"]["by_reason"].items())


def _build_into(
    tmp: Path, cfg: BuildConfig, records, alive, exclusions, notes, drop, t0, severity, anomalies, masks, segmenter
) -> dict:
    todo = [i for i in range(len(records)) if alive[i]]
    scratch = tmp / "scratch.npy"
    slot, digests, phash, images_per_s, masks_later = read_images(scratch, cfg, records, todo, drop)
    if cfg.strict and masks_later:
        raise strict_failure(masks_later)
    # 5. exact duplicates anywhere, near duplicates across sources: keep the first (source order, path)
    kept, links, uf = drop_duplicates(records, todo, alive, digests, phash, drop)
    carry_severity(records, links)
    # 6. groups that must share a split, then the split
    group_patients(records, kept, links, uf)
    split_of, official = assign_splits(cfg, records, kept, uf, drop)
    kept = [i for i in kept if alive[i]]
    # 7. checks, then the outputs
    checks = run_checks(records, kept, split_of, phash, digests)
    refuse_failures(cfg, checks, exclusions)
    order = sorted(kept, key=lambda i: (SPLITS.index(split_of[i]), records[i].source, str(records[i].path)))
    write_store(tmp, cfg, scratch, slot, order, records)
    predicted = predict_masks(tmp, cfg, records, order, segmenter) if segmenter else None
    risk, _ = check_offsets([records[i] for i in order])  # sets offset_days, for the index
    write_index(tmp / INDEX_FILE, [(records[i], split_of[i]) for i in order])
    write_label_files(tmp, records, order, split_of)
    write_records_table(tmp / "records.csv", records, alive, split_of, exclusions)
    report = build_report(cfg, records, order, split_of, exclusions, notes, checks, official, images_per_s, t0)
    report["severity"] = severity_in_splits(severity, records, order, split_of) if severity else None
    report["risk"] = risk
    report["lung_masks"] = masks_section(masks, masks_later, predicted, records, order, split_of)
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
