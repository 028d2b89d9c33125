"""Masks for a build's images that have none: ``covidnet data build --lungs MODEL`` with a ``covidnet lungs
train`` checkpoint (PyTorch) or its ``covidnet export`` (ONNX Runtime, no torch, faster on a CPU), through
``open_segmenter``, which ``covidnet lungs eval`` and ``predict`` use too."""

from __future__ import annotations

import sys
from collections import deque
from pathlib import Path

import numpy as np

from ..contract import Contract
from ..errors import CovidnetError
from ..runtime import LoadedModel as Segmenter
from ..runtime import load


def open_segmenter(
    path: str | Path, device: str = "auto", batch_size: int | None = None, threads: int | None = None
) -> Segmenter:
    """The lung segmenter in ``path``: an exported ``.onnx`` on ONNX Runtime (``threads`` intra-op threads,
    default all cores), otherwise a checkpoint in PyTorch on ``device``. Anything else (a classifier, a file
    that is neither) is one line naming it."""
    if Path(path).suffix.lower() == ".onnx" and device == "auto":
        device = "cpu"
    return load(path, device, batch_size, threads, tasks=("segmentation",))


def open_segmenter_for(model: str | Path, contract: Contract, workers: int = 1) -> Segmenter:
    """The segmenter in ``model`` (``open_segmenter``) for a build with ``workers`` processes, checked
    against its contract: it must have been trained on the same top crop (the framing it learnt); another
    stored size is resized. With several workers an ONNX model runs one thread per batch and
    ``segment_store_rows`` segments that many batches side by side: on two cores that is about a fifth
    faster than one batch on two threads (a small network parallelises poorly within a batch)."""
    lm = open_segmenter(model, "auto", threads=1 if workers > 1 else None)
    if lm.contract.top_crop != contract.top_crop:
        raise CovidnetError(
            f"{model}: trained on a top crop of {lm.contract.top_crop}, but this build crops "
            f"{contract.top_crop}; build with --top-crop {lm.contract.top_crop} or train a segmenter on this crop"
        )
    return lm


def segment_store_rows(lm: Segmenter, folder: Path, rows: np.ndarray, progress: bool, workers: int = 1):
    """``lm``'s lung masks for ``rows`` of the store being written in ``folder`` (its images.npy), into the
    same rows of its masks.npy, a batch at a time (``lm`` as ``open_segmenter_for`` opened and checked it);
    a ``concurrent`` segmenter takes ``workers`` batches at once, the masks written in row order as they
    come. Returns the report's ``predicted`` section."""
    from concurrent.futures import ThreadPoolExecutor

    from ..data.store import IMAGES_FILE, MASKS_FILE, RowFile

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


__all__ = ["open_segmenter", "open_segmenter_for", "segment_store_rows"]
