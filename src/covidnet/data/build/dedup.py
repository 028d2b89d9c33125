"""Duplicates, exact and near: the perceptual hash of a stored image and the all-pairs search for near
duplicates (the one used by the build, which drops them, and by the audit, which reports them); exact
duplicates (identical files) anywhere and near duplicates across sources are dropped, the first (source
order, path) kept.
"""

from __future__ import annotations

import numpy as np

from ..severity import SCORES
from .split import UnionFind

PHASH_SIZE = 16  # 256-bit perceptual hash: on the real sources the closest distinct cross-source pair is
NEAR_DUP_BITS = 24  # 76 bits apart and true re-publications are <= 4 apart, so 24 leaves a wide margin


def perceptual_hash(img: np.ndarray) -> bytes:
    """The 256-bit perceptual hash (imagehash's DCT pHash) of a stored image, packed: what near
    duplicates are found by, in the build and in the audit."""
    import imagehash
    from PIL import Image

    return np.packbits(imagehash.phash(Image.fromarray(img), hash_size=PHASH_SIZE).hash.flatten()).tobytes()


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


def near_matches(h: bytes, hashes: np.ndarray, max_bits: int = NEAR_DUP_BITS) -> np.ndarray:
    """The indices of the packed ``hashes`` (rows) at Hamming distance <= ``max_bits`` from the packed hash
    ``h``, in order: one film against a store's hashes (``near_duplicate_pairs`` searches all pairs of one set)."""
    x = np.bitwise_xor(np.ascontiguousarray(hashes, dtype=np.uint8), np.frombuffer(h, np.uint8))
    return np.flatnonzero(np.bitwise_count(x).sum(1, dtype=np.int64) <= max_bits)


def hash_matrix(phash: dict[int, bytes], rows: list[int]) -> np.ndarray:
    """The packed perceptual hashes of ``rows`` (keys of ``phash``), one row each: what
    ``near_duplicate_pairs`` searches."""
    if not rows:
        return np.zeros((0, PHASH_SIZE**2 // 8), np.uint8)
    return np.frombuffer(b"".join(phash[i] for i in rows), dtype=np.uint8).reshape(len(rows), -1)


def drop_duplicates(
    records, todo: list[int], alive, digests, phash, drop
) -> tuple[list[int], list[tuple[int, int]], UnionFind]:
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
    uf = UnionFind(len(records))
    for a, b in near_duplicate_pairs(hash_matrix(phash, kept)):
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


def carry_severity(records, links: list[tuple[int, int]]) -> None:
    """A dropped duplicate's severity scores go with the copy that is kept (when that one has none)."""
    for i, j in links:
        if all(s in records[j].extra for s in SCORES) and not any(s in records[i].extra for s in SCORES):
            records[i].extra.update({s: records[j].extra[s] for s in SCORES})
