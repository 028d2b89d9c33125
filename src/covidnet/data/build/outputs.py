"""What a build writes besides the store, and the checks made before it writes anything: the guarantees
(no patient in two splits, no exact or near-duplicate pair across splits, every record accounted for) and
--strict's refusal; the COVIDx label files (``train.txt``, ``val.txt``, ``test.txt``), ``records.csv`` (every
record, with its split or why it was left out) and the report (``report.json``).
"""

from __future__ import annotations

import csv
import time
from collections import Counter, defaultdict
from dataclasses import asdict
from pathlib import Path

from ... import __version__
from ...errors import CovidnetError
from ..records import CLASSES, LABELS, NEGATIVE_ONLY, Exclusion
from .config import FILTER_REASONS, SPLITS, BuildConfig
from .dedup import NEAR_DUP_BITS, PHASH_SIZE, hash_matrix, near_duplicate_pairs

UNKNOWN_SITE = "(unknown)"  # report.json's key for the images of a source whose site is not known


def run_checks(records, kept, split_of, phash, digests) -> dict:
    """The build's guarantees on the split, checked before anything is written: report.json's ``checks``."""
    patient_splits: dict[str, set[str]] = defaultdict(set)
    for i in kept:
        patient_splits[records[i].uid].add(split_of[i])
    crossing_patients = sorted(p for p, s in patient_splits.items() if len(s) > 1)
    digest_splits: dict[str, set[str]] = defaultdict(set)
    for i in kept:
        digest_splits[digests[i]].add(split_of[i])
    crossing_exact = sum(1 for s in digest_splits.values() if len(s) > 1)
    crossing_near = [
        (kept[a], kept[b])
        for a, b in near_duplicate_pairs(hash_matrix(phash, kept))
        if split_of[kept[a]] != split_of[kept[b]]
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


def refuse_failures(cfg: BuildConfig, checks: dict, exclusions: list[Exclusion]) -> None:
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


def write_label_files(tmp: Path, records, order: list[int], split_of: dict[int, str]) -> None:
    """The COVIDx label files: ``train.txt``, ``val.txt``, ``test.txt``."""
    for split in SPLITS:
        with open(tmp / f"{split}.txt", "w") as f:
            for i in order:
                if split_of[i] == split:
                    r = records[i]
                    f.write(f"{r.patient_id} {r.filename} {r.label} {r.source}\n")


def write_records_table(path: Path, records, alive, split_of, exclusions) -> None:
    reason = {e.item: e for e in exclusions}
    # errors: the path of a file whose name is not UTF-8 (left out) is written with its bytes escaped
    with open(path, "w", newline="", encoding="utf-8", errors="backslashreplace") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "patient_id",
                "filename",
                "path",
                "label",
                "source",
                "site",
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
                    r.site,
                    r.view or "",
                    "" if r.age is None else f"{r.age:g}",
                    r.sex or "",
                    split_of.get(i, "") if alive[i] else "",
                    e.reason if e else "",
                    e.detail if e else "",
                ]
            )


def build_report(cfg, records, order, split_of, exclusions, notes, checks, official, images_per_s, t0) -> dict:
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
        "sites": site_counts(records, order, split_of, labels),
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


def site_counts(records, order, split_of, labels) -> dict:
    """Images per site and class, within each source (a site is where a source's films were taken; the same
    name from two sources stays two entries): over the dataset (``all``) and per split; ``UNKNOWN_SITE`` holds
    a source's images whose site its metadata does not say."""
    out: dict = {key: {} for key in ("all", *SPLITS)}
    for i in order:
        r = records[i]
        for key in ("all", split_of[i]):
            cell = out[key].setdefault(r.source, {}).setdefault(r.site or UNKNOWN_SITE, dict.fromkeys(labels, 0))
            cell[r.label] += 1
    return {key: {src: dict(sorted(v.items())) for src, v in sorted(by.items())} for key, by in out.items()}


def severity_in_splits(section: dict, records, order, split_of) -> dict:
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
