"""A checkpoint's network in PyTorch, on a CPU or a GPU: the outputs of any task through the task's own
``forward`` (what training's validation computes), pooled features, and heat maps (Grad-CAM,
``covidnet.explain``), for evaluation, prediction, the audit, the service and a researcher's notebook.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import metadata, network, read_checkpoint
from ..contract import uint8_to_unit
from .base import LoadedModel
from .device import memory_format_of, predict_outputs, resolve_device


class TorchModel(LoadedModel):
    """A checkpoint's network (``model``) on ``device``, in eval mode, with its metadata, task and contract."""

    kind = "torch"

    def __init__(self, path: str | Path, model: torch.nn.Module, meta: dict, device: torch.device, batch_size=None):
        super().__init__(path, meta, batch_size)
        self.model, self.device = model, device
        self.memory_format = memory_format_of(meta)
        self.on_gpu = device.type == "cuda"
        self._explainers: dict = {}

    @classmethod
    def open(
        cls,
        checkpoint: str | Path,
        device: str = "auto",
        batch_size: int | None = None,
        threads: int | None = None,
        ckpt: dict | None = None,
    ) -> TorchModel:
        """The network of ``checkpoint`` (``ckpt``: the file already read by ``read_checkpoint``)."""
        if threads:
            torch.set_num_threads(threads)  # process-wide: torch has one intra-op pool
        ckpt = read_checkpoint(checkpoint) if ckpt is None else ckpt
        dev = resolve_device(device)
        return cls(checkpoint, network(ckpt, dev, path=checkpoint), metadata(ckpt), dev, batch_size)

    def forward(self, unit: torch.Tensor) -> torch.Tensor:
        """Stored pixels as floats in [0, 1] (B, 1, S, S) on the device -> the task's outputs."""
        return self.task.forward(self.model, unit, self.contract, self.memory_format)

    def outputs(self, images, rows: np.ndarray | None = None, forward: Callable | None = None) -> torch.Tensor:
        """The outputs of ``images`` (or a store's ``rows``) as a float32 tensor on the CPU; ``forward`` in place
        of the task's (e.g. pooled features)."""
        n = len(rows) if rows is not None else len(images)
        transform = self.contract.standardise

        def get(pos: np.ndarray) -> torch.Tensor:
            which = pos if rows is None else rows[pos]
            batch = images.read(which) if hasattr(images, "read") else np.ascontiguousarray(images[which])
            return torch.from_numpy(transform(batch))

        return predict_outputs(self.model, get, np.arange(n), self.batch_size, self.device, forward or self.forward)

    def batch_logits(self, batch: np.ndarray) -> np.ndarray:
        return self.outputs(batch).numpy()

    def logits(self, images, rows: np.ndarray | None = None, progress: bool = False) -> np.ndarray:
        if progress:
            return super().logits(images, rows, progress)
        return self.outputs(images, rows).numpy()

    def features(self, images, rows: np.ndarray | None = None) -> np.ndarray:
        """Frozen features: the last feature map averaged over space, (N, C)."""

        def pooled(unit):
            x = self.contract.model_input(unit, self.memory_format)
            return self.model.forward_features(x).float().mean((2, 3))

        return self.outputs(images, rows, forward=pooled).numpy()

    def cam(self, image: np.ndarray, output: int, method: str = "gradcam") -> np.ndarray:
        """A (h, w) heat map in [0, 1] of one (S, S) uint8 image for output ``output``."""
        return self.cams(np.asarray(image)[None], [int(output)], method)[0]

    def cams(self, images: np.ndarray, outputs=None, method: str = "gradcam") -> np.ndarray:
        """(B, h, w) heat maps in [0, 1] at the model's input side, one per (S, S) uint8 image of ``images``,
        each for its entry of ``outputs`` (None: each image's predicted class)."""
        from ..explain import CamExplainer

        if method not in self._explainers:
            self._explainers[method] = CamExplainer(self.model, method=method)
        x = uint8_to_unit(torch.from_numpy(self.contract.standardise(np.array(images))).to(self.device))
        return self._explainers[method](self.contract.model_input(x, self.memory_format), outputs)
