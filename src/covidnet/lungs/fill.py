"""Masks for a build's images that have none: ``covidnet data build --lungs MODEL`` with a ``covidnet lungs
train`` checkpoint (PyTorch) or its ``covidnet export`` (ONNX Runtime, no torch, faster on a CPU), through
``open_segmenter``, which ``covidnet lungs eval`` and ``predict`` use too."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from ..contract import Contract
from ..errors import CovidnetError
from .segmenter import OnnxLungModel, Segmenter


def open_segmenter(path: str | Path, device: str = "auto", batch_size: int | None = None) -> Segmenter:
    """The lung segmenter in ``path``: an exported ``.onnx`` on ONNX Runtime, otherwise a checkpoint in
    PyTorch on ``device``. Anything else (a classifier, a file that is neither) is one line naming it."""
    if Path(path).suffix.lower() == ".onnx":
        return OnnxLungModel(path, "cpu" if device == "auto" else device, batch_size=batch_size)
    from .infer import LungModel  # torch: only a checkpoint pays for it

    return LungModel.open(path, device, batch_size)


def open_segmenter_for(model: str | Path, contract: Contract) -> Segmenter:
    """The segmenter in ``model`` (``open_segmenter``), checked against a build's contract: it must have
    been trained on the same top crop (the framing it learnt); another stored size is resized."""
    lm = open_segmenter(model, "auto")
    if lm.contract.top_crop != contract.top_crop:
        raise CovidnetError(
            f"{model}: trained on a top crop of {lm.contract.top_crop}, but this build crops "
            f"{contract.top_crop}; build with --top-crop {lm.contract.top_crop} or train a segmenter on this crop"
        )
    return lm


def segment_store_rows(model: str | Path, folder: Path, contract: Contract, rows: np.ndarray, progress: bool):
    """The model's lung masks for ``rows`` of the store being written in ``folder`` (its images.npy), into
    the same rows of its masks.npy, a batch at a time (``open_segmenter_for``). Returns the report's
    ``predicted`` section."""
    from ..data.store import IMAGES_FILE, MASKS_FILE, RowFile

    lm = open_segmenter_for(model, contract)
    images, masks = RowFile(folder / IMAGES_FILE), RowFile(folder / MASKS_FILE, writable=True)
    starts = range(0, len(rows), lm.batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="lung masks", unit="batch", file=sys.stderr)
    try:
        for k in starts:
            part = rows[k : k + lm.batch_size]
            for row, mask in zip(part, lm.masks(images.read(part))):
                masks.write(int(row), mask)
    finally:
        images.close()
        masks.close()
    return {"checkpoint": str(model), "model": lm.model_id, "runtime": lm.kind, "images": int(len(rows))}


__all__ = ["open_segmenter", "open_segmenter_for", "segment_store_rows"]
