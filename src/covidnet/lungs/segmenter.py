"""A lung segmenter behind one interface, whatever runs it: stored uint8 pixels -> lung logits,
probabilities and masks at the pixels' own side, a batch at a time (an (N, S, S) array, or a built
dataset's ``Store`` and its rows).

Two kinds implement ``batch_logits``: ``covidnet.lungs.infer.LungModel`` (a ``covidnet lungs train``
checkpoint in PyTorch) and ``OnnxLungModel`` here (that checkpoint written by ``covidnet export``, on ONNX
Runtime: its graph holds the contract's resizing and normalisation and the resizing of the logits back to
the stored side). This module imports no torch, so ``data build --lungs MODEL.onnx`` needs none.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from ..contract import LOGIT_THRESHOLD, THRESHOLD, Contract, contract_of, is_lung
from ..data.lungmasks import BACKGROUND, LUNG
from ..errors import ConfigError
from ..files import file_id

TASK = "lungs"  # the task a lungs checkpoint (and its export) says it is


def to_mask(logits: np.ndarray) -> np.ndarray:
    """Lung logits -> a stored-form lung mask (uint8 0 background / 255 lung)."""
    return np.where(is_lung(logits), np.uint8(LUNG), np.uint8(BACKGROUND))


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """The logistic function, without overflow for large negative logits."""
    from scipy.special import expit

    return expit(logits).astype(np.float32)


def batch_size_of(meta: dict, given: int | None = None) -> int:
    """Images a segmenter takes at a time: ``given``, else the batch its training evaluated with."""
    return given or meta.get("train_config", {}).get("eval_batch_size", 32)


class Segmenter:
    """What every lung segmenter has: ``path`` (the model file), ``arch``, ``contract``, ``batch_size``,
    ``kind`` ("torch" or "onnx"), ``concurrent`` (whether two threads may call ``batch_logits`` at once)
    and ``batch_logits``; the rest is here, once."""

    path: Path
    arch: str
    contract: Contract
    batch_size: int
    kind: str
    concurrent: bool = False

    def batch_logits(self, batch: np.ndarray) -> np.ndarray:
        """(B, S, S) uint8 stored pixels -> (B, S, S) float32 lung logits at the same side."""
        raise NotImplementedError

    @property
    def model_id(self) -> str:
        return file_id(self.path, self.arch + ("-onnx" if self.kind == "onnx" else ""))

    def logits(self, images, rows: np.ndarray | None = None, progress: bool = False) -> np.ndarray:
        """(N, S, S) float32 lung logits of ``images`` (or a store's ``rows``), ``batch_size`` at a time."""
        n = len(rows) if rows is not None else len(images)
        side = images.size if hasattr(images, "read") else images.shape[-1]
        out = np.empty((n, side, side), np.float32)
        starts = range(0, n, self.batch_size)
        if progress:
            from tqdm import tqdm

            starts = tqdm(starts, desc="lungs", unit="batch", file=sys.stderr, leave=False)
        for k in starts:
            pos = np.arange(k, min(k + self.batch_size, n))
            if rows is not None:
                batch = images.read(rows[pos]) if hasattr(images, "read") else images[rows[pos]]
            else:
                batch = images[pos]
            out[pos] = self.batch_logits(np.ascontiguousarray(batch))
        return out

    def probabilities(self, images, rows: np.ndarray | None = None, progress: bool = False) -> np.ndarray:
        """(N, S, S) float32 lung probabilities of ``images`` (or a store's ``rows``), at their stored side."""
        return sigmoid(self.logits(images, rows, progress))

    def masks(self, images, rows: np.ndarray | None = None, progress: bool = False) -> np.ndarray:
        """(N, S, S) uint8 lung masks (0 / 255) of ``images`` (or a store's ``rows``)."""
        return to_mask(self.logits(images, rows, progress))


class OnnxLungModel(Segmenter):
    """A lung segmenter written by ``covidnet export`` on ONNX Runtime (``threads``: intra-op threads,
    default all cores). A session's ``run`` is thread-safe and releases the GIL, so batches may be
    segmented side by side (``concurrent``)."""

    kind = "onnx"
    concurrent = True

    def __init__(
        self, path: str | Path, device: str = "cpu", threads: int | None = None, batch_size: int | None = None
    ):
        from ..predict import onnx_session

        self.path = Path(path)
        self.session, self.meta = onnx_session(self.path, device, threads)
        task = self.meta.get("task", "classification")
        if task != TASK:
            raise ConfigError(
                f"{path}: a {task} model, not a lung segmenter; export a `covidnet lungs train` checkpoint "
                "(covidnet export --checkpoint best.pt --out lungs.onnx)"
            )
        self.arch = self.meta["arch"]
        self.contract = contract_of(self.meta)
        self.batch_size = batch_size_of(self.meta, batch_size)
        self.input_name = self.session.get_inputs()[0].name

    def batch_logits(self, batch: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(self.contract.standardise(batch)[:, None])
        return self.session.run(None, {self.input_name: x})[0][:, 0].astype(np.float32, copy=False)


__all__ = [
    "LOGIT_THRESHOLD",
    "OnnxLungModel",
    "Segmenter",
    "THRESHOLD",
    "TASK",
    "batch_size_of",
    "is_lung",
    "sigmoid",
    "to_mask",
]
