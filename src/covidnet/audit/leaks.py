"""Test 6, leakage: patients in two splits, identical and near-identical images across splits or sources."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from ..data.records import patient_uid
from .batches import chunks


def leakage(index: list[dict], images) -> dict:
    import hashlib

    from ..data.build.dedup import NEAR_DUP_BITS, near_duplicate_pairs, perceptual_hash

    splits = defaultdict(set)
    for r in index:
        splits[patient_uid(r["source"], r["patient_id"])].add(r["split"])
    patients_crossing = sorted(p for p, s in splits.items() if len(s) > 1)
    digest, hashes = [], []
    for chunk in chunks(images):  # one pass, a batch at a time
        digest += [hashlib.sha256(np.ascontiguousarray(im).tobytes()).hexdigest() for im in chunk]
        hashes += [np.frombuffer(perceptual_hash(np.asarray(im)), np.uint8) for im in chunk]
    hashes = np.stack(hashes) if hashes else np.zeros((0, 32), np.uint8)
    by_digest = defaultdict(list)
    for i, d in enumerate(digest):
        by_digest[d].append(i)
    exact_cross = [g for g in by_digest.values() if len({index[i]["split"] for i in g}) > 1]
    pairs = near_duplicate_pairs(hashes, NEAR_DUP_BITS)
    near_cross_split = [(i, j) for i, j in pairs if index[i]["split"] != index[j]["split"]]
    near_cross_source = [(i, j) for i, j in pairs if index[i]["source"] != index[j]["source"]]
    verdict = (
        "fail" if (patients_crossing or exact_cross or near_cross_split) else "warning" if near_cross_source else "ok"
    )
    name = lambda i: f"{index[i]['source']}:{index[i]['filename']} ({index[i]['split']})"
    return {
        "test": "leakage",
        "verdict": verdict,
        "patients_in_two_splits": len(patients_crossing),
        "exact_duplicates_across_splits": len(exact_cross),
        "near_duplicates_across_splits": len(near_cross_split),
        "near_duplicates_across_sources": len(near_cross_source),
        "examples": [f"{name(i)} ~ {name(j)}" for i, j in (near_cross_split + near_cross_source)[:10]],
        "thresholds": {
            "fail": "any patient or image across splits",
            "warning": "an image in two sources",
            "near_duplicate_bits": NEAR_DUP_BITS,
        },
        "reading": (
            "Patients or images are shared between splits: test figures are optimistic."
            if verdict == "fail"
            else "The same image appears in two sources."
            if verdict == "warning"
            else "No patient or image is shared between splits or sources."
        ),
    }
