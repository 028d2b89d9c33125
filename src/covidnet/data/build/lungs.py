"""The lung-mask stage of a build (``--lungs MODEL``): the segmenter its caller opened
(``covidnet.load``; data is a lower layer than ``covidnet.runtime`` and never imports
it), checked against the build's contract before anything is read; its masks for the stored images without
an annotated one, written into their rows of ``masks.npy``; and the report's ``lung_masks`` section.
"""

from __future__ import annotations

import sys
from collections import deque
from pathlib import Path
from typing import Protocol

import numpy as np

from ...contract import Contract
from ...errors import ConfigError, CovidnetError
from ..lungmasks import NAME_KEY, PREDICTED, finish_section
from ..store import IMAGES_FILE, MASKS_FILE, RowFile
from .config import BuildConfig


class StoreSegmenter(Protocol):
    """What the build uses of a lung segmenter (a segmentation model that ``covidnet.load`` opened has it): the
    model file and its id, the runtime (``kind``), the contract it was trained on, the images it takes at a
    time, whether two threads may segment at once (``concurrent``), and ``masks`` of (B, S, S) stored pixels."""

    path: Path
    model_id: str
    kind: str
    contract: Contract
    batch_size: int
    concurrent: bool

    def masks(self, images: np.ndarray) -> np.ndarray: ...


def segmenter_threads(processes: int) -> int | None:
    """The threads a build's segmenter should run on (``covidnet.load(cfg.lungs, threads=...)``): with several
    build processes, one per batch, so the build segments that many batches side by side (on two cores about a
    fifth faster than one batch on two threads: a small network parallelises poorly within a batch); with one,
    the runtime's default (every core)."""
    return 1 if processes > 1 else None


def check_segmenter(cfg: BuildConfig, segmenter: StoreSegmenter | None) -> None:
    """A segmenter is passed exactly when ``cfg.lungs`` names one (the file config.json records), and it was
    trained on this build's top crop (the framing it learnt; another stored size is resized). One line each,
    before anything is read or written."""
    if segmenter is None:
        if cfg.lungs:
            raise ConfigError(
                "BuildConfig.lungs is set: pass the segmenter, build_dataset(cfg, "
                "segmenter=covidnet.load(cfg.lungs, threads=segmenter_threads(cfg.processes)))"
            )
        return
    if not cfg.lungs:
        raise ConfigError(
            f"a segmenter ({segmenter.path}) is passed but BuildConfig.lungs is not set: set it to that file, "
            "which config.json records"
        )
    if segmenter.path is not None and Path(segmenter.path).resolve() != Path(cfg.lungs).resolve():
        raise ConfigError(
            f"{segmenter.path}: the segmenter passed is not BuildConfig.lungs ({cfg.lungs}), which config.json "
            "records; open that file"
        )
    top_crop = cfg.contract.top_crop
    if segmenter.contract.top_crop != top_crop:
        raise CovidnetError(
            f"{cfg.lungs}: trained on a top crop of {segmenter.contract.top_crop}, but this build crops "
            f"{top_crop}; build with --top-crop {segmenter.contract.top_crop} or train a segmenter on this crop"
        )


def predict_masks(tmp: Path, cfg: BuildConfig, records, order: list[int], segmenter: StoreSegmenter) -> dict:
    """``--lungs MODEL``: masks for the stored images without an annotated one, drawn by ``segmenter`` (checked
    by ``check_segmenter``) and written into their rows of ``masks.npy``; those records are marked predicted
    (the index says so). Returns the report's ``predicted`` section."""
    rows = [row for row, i in enumerate(order) if not records[order[row]].extra.get(NAME_KEY)]
    info = segment_store_rows(segmenter, tmp, np.array(rows, dtype=np.int64), cfg.progress, cfg.processes)
    for row in rows:
        records[order[row]].extra[NAME_KEY] = PREDICTED
    return info


def segment_store_rows(lm: StoreSegmenter, folder: Path, rows: np.ndarray, progress: bool, workers: int = 1):
    """``lm``'s lung masks for ``rows`` of the store being written in ``folder`` (its images.npy), into the
    same rows of its masks.npy, a batch at a time; a ``concurrent`` segmenter takes ``workers`` batches at
    once (``segmenter_threads``: an ONNX model one thread per batch when the build has several processes), the
    masks written in
    row order as they come. Returns the report's ``predicted`` section."""
    from concurrent.futures import ThreadPoolExecutor

    images, masks = RowFile(folder / IMAGES_FILE), RowFile(folder / MASKS_FILE, writable=True)
    parts = [rows[k : k + lm.batch_size] for k in range(0, len(rows), lm.batch_size)]
    threads = max(1, workers) if lm.concurrent else 1
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(parts), desc="lung masks", unit="batch", file=sys.stderr)

    def write(part, future):
        for row, mask in zip(part, future.result()):
            masks.write(int(row), mask)
        if bar is not None:
            bar.update()

    try:
        with ThreadPoolExecutor(threads) as pool:
            pending: deque = deque()
            for part in parts:  # at most two batches per thread in flight: memory stays a few batches
                pending.append((part, pool.submit(lambda p: lm.masks(images.read(p)), part)))
                if len(pending) > 2 * threads:
                    write(*pending.popleft())
            while pending:
                write(*pending.popleft())
    finally:
        if bar is not None:
            bar.close()
        images.close()
        masks.close()
    return {"checkpoint": str(lm.path), "model": lm.model_id, "runtime": lm.kind, "images": int(len(rows))}


def masks_section(masks, later, predicted, records, order, split_of) -> dict | None:
    """The report's ``lung_masks``: the annotated sets' join and what reached the store, and the predicted
    masks of ``--lungs``."""
    if masks is None and predicted is None:
        return None
    section = finish_section(masks or {"sets": [], "excluded": {"items": []}}, later, records, order, split_of)
    section["predicted"] = predicted
    return section
