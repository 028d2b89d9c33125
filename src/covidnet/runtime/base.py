"""What every loaded model is, whatever runs it (``covidnet.load``): its metadata (``meta``, in today's form:
``checkpoint.upgrade``), its preprocessing contract, its task, which backend runs it (``kind``: "torch" or
"onnx"), and the one way stored uint8 pixels become its outputs, a batch at a time (``logits``: class logits
(N, K), scores, or a segmenter's lung logits (N, S, S) at the pixels' side). The rest is here once:
prediction results (``predict``), probabilities, lung masks, the description a client reads. This module
imports no torch.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from ..checkpoint import classifier_arch
from ..contract import Contract, contract_of, is_lung
from ..data.lungmasks import BACKGROUND, LUNG
from ..errors import UsageError
from ..files import file_id
from ..tasks import Task, task_from_meta


class LoadedModel:
    """A model ready to run (see the module's docstring). Subclasses set ``kind``, ``concurrent`` (whether two
    threads may call ``batch_logits`` at once) and ``on_gpu``, and define ``batch_logits``."""

    kind: str
    concurrent = False
    on_gpu = False

    def __init__(self, path: str | Path, meta: dict, batch_size: int | None = None):
        self.path = Path(path)
        self.meta = meta
        self.contract: Contract = contract_of(meta)
        self.task: Task = task_from_meta(meta)
        self.arch = classifier_arch(meta)
        self.batch_size = batch_size or meta.get("train_config", {}).get("eval_batch_size") or 32
        self.model_id = file_id(self.path, self.arch + self.id_suffix)

    id_suffix = ""  # what the model id adds to the architecture for this backend (an int8 export's "-int8")

    @property
    def classes(self) -> list[str]:
        return list(self.meta.get("classes") or self.task.outputs)

    def batch_logits(self, batch: np.ndarray) -> np.ndarray:
        """(B, S, S) uint8 stored pixels -> the task's outputs for them, float32."""
        raise NotImplementedError

    def logits(self, images, rows: np.ndarray | None = None, progress: bool = False) -> np.ndarray:
        """The outputs of ``images``, an (N, S, S) uint8 array, or of ``rows`` of a built dataset's ``Store``
        (read by row, never whole), ``batch_size`` at a time."""
        n = len(rows) if rows is not None else len(images)
        starts = range(0, n, self.batch_size)
        if progress:
            from tqdm import tqdm

            starts = tqdm(starts, desc=self.task.name, unit="batch", file=sys.stderr, leave=False)
        parts = []
        for k in starts:
            pos = np.arange(k, min(k + self.batch_size, n))
            which = pos if rows is None else rows[pos]
            batch = images.read(which) if hasattr(images, "read") else images[which]
            parts.append(self.batch_logits(np.ascontiguousarray(batch)))
        return np.concatenate(parts) if parts else np.zeros((0, len(self.task.outputs)), np.float32)

    def predict(self, images, threshold: str | None = None, operating_point: str | None = None) -> list[dict]:
        """The task's result for each image of ``images`` ((N, S, S) stored pixels, e.g. ``contract.load``):
        label, probabilities and triage; severity scores; a risk bin. A task that predicts nothing here (a
        segmenter: ``masks``; a self-supervised backbone) is refused in one line."""
        if self.task.not_predicted:
            raise UsageError(f"{self.path}: {self.task.not_predicted}")
        rule = self.task.decision_rule(self.meta, threshold, operating_point)
        return self.task.results(self.logits(images), self.meta, rule)

    def probabilities(self, images, rows: np.ndarray | None = None, progress: bool = False) -> np.ndarray:
        """A classifier's class probabilities (after the fitted temperature); a segmenter's lung probability
        per pixel."""
        if self.task.name not in ("classification", "segmentation"):
            raise UsageError(f"{self.path}: a {self.task.name} model; its results are ``predict``'s")
        out = self.logits(images, rows, progress)
        if self.task.name == "segmentation":
            from scipy.special import expit

            return expit(out).astype(np.float32)
        return self.task.probabilities(out, self.meta)

    def masks(self, images, rows: np.ndarray | None = None, progress: bool = False) -> np.ndarray:
        """A segmenter's lung masks (N, S, S) uint8 in the stored form (0 background, 255 lung)."""
        if self.task.name != "segmentation":
            raise UsageError(f"{self.path}: a {self.task.name} model draws no lung masks; give a segmentation model")
        return np.where(is_lung(self.logits(images, rows, progress)), np.uint8(LUNG), np.uint8(BACKGROUND))

    def features(self, images, rows: np.ndarray | None = None) -> np.ndarray:
        raise UsageError(f"{self.path}: pooled features need the PyTorch checkpoint, not the {self.kind} model")

    def cam(self, image: np.ndarray, output: int, method: str = "gradcam") -> np.ndarray:
        raise UsageError("heat maps need the model's gradients: use the PyTorch checkpoint (--checkpoint), not --onnx")

    def check_store(self, store, where: str) -> None:
        """Refuse a built dataset whose stored pixels are not those this model was trained on."""
        self.contract.check_store(store, where)

    def describe(self) -> dict:
        """What a client needs to know about the model: id, architecture, task, classes, the input contract,
        calibration and operating point."""
        m = self.meta
        return {
            "model_id": self.model_id,
            "runtime": self.kind,
            "arch": self.arch,
            "classes": self.classes,
            "task": self.task.name,
            "input": self.contract.to_dict(),
            "temperature": m.get("temperature"),
            "operating_point": m.get("operating_point"),
            "int8": bool(m.get("int8", False)),
            "covidnet_version": m.get("version"),
        }
