"""The image stage of a build: every image read, hashed and preprocessed once (``Contract.load``, the one
pixel path), in worker processes, into a scratch store; its lung mask, if it has one, through the same
geometry into scratch masks; then the rows that stay copied, in the dataset's order, into the store
(``images.npy``, and ``masks.npy`` beside it). Rows are written with ``pwrite`` and copied one at a time, so
memory stays flat in the number of images.
"""

from __future__ import annotations

import hashlib
import os
import time
from multiprocessing import get_all_start_methods, get_context
from pathlib import Path

import numpy as np

from ...contract import Contract
from ...errors import CovidnetError
from ...imageio import image_shape
from ..lungmasks import LUNG, NAME_KEY, REF_KEY, MaskReader, mask_problem
from ..records import Exclusion
from ..store import IMAGES_FILE, MASKS_FILE, RowFile
from .config import BuildConfig
from .dedup import perceptual_hash

_WORKER: dict = {}  # what a worker process holds: the open row files, the contract, a mask reader


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
    except OSError as e:  # decoded, then gone or made unreadable before it was hashed
        return i, f"{path}: cannot read ({e.strerror or e})", None, None, None
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


def read_images(
    scratch: Path, cfg: BuildConfig, records, todo: list[int], drop
) -> tuple[dict[int, int], dict[int, str], dict[int, bytes], float, list[Exclusion]]:
    """Read, hash and preprocess every image of ``todo`` once, in parallel, into row ``slot[i]`` of the
    scratch store; an unreadable one is dropped. Returns (slot, file hashes, perceptual hashes, images/s, the
    lung masks left out)."""
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


def _consume(iterator, total: int, progress: bool) -> list:
    if progress:
        import sys

        from tqdm import tqdm

        iterator = tqdm(iterator, total=total, desc="images", unit="img", file=sys.stderr)
    return list(iterator)


def write_store(tmp: Path, cfg: BuildConfig, scratch: Path, slot: dict[int, int], order: list[int], records) -> None:
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
