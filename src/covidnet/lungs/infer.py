"""A trained lung segmenter in PyTorch: stored uint8 pixels -> lung logits, probabilities and masks at the
pixels' own size, through the checkpoint's preprocessing contract. ``covidnet lungs eval``, ``covidnet
lungs predict``, ``covidnet data build --lungs`` and training's validation all segment through
``lung_logits``, which is also the graph ``covidnet export`` writes, so every consumer and the ONNX model
feed the network exactly alike."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..checkpoint import load_model, read_checkpoint
from ..contract import Contract, contract_of
from ..errors import ConfigError
from ..runtime import memory_format_of, resolve_device, uint8_to_unit
from .field import lung_logits
from .segmenter import TASK, Segmenter, batch_size_of

__all__ = ["LungModel", "TASK", "lung_logits", "segment_logits"]


@torch.no_grad()
def segment_logits(model, x: torch.Tensor, contract: Contract, memory_format=torch.contiguous_format) -> torch.Tensor:
    """Lung logits (B, H, W) float32 for stored pixels ``x`` (B, H, W) uint8 on the model's device, in eval
    mode (``lung_logits``); bf16 autocast on GPU, as in training."""
    was_training = model.training
    model.eval()
    amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=x.device.type == "cuda")
    with amp:
        logits = lung_logits(model, uint8_to_unit(x), contract, memory_format).float()
    model.train(was_training)
    return logits[:, 0]


class LungModel(Segmenter):
    """A ``covidnet lungs train`` checkpoint on a device, with its contract (``Segmenter``'s
    ``probabilities`` and ``masks``)."""

    kind = "torch"

    def __init__(self, model, meta: dict, device: torch.device, batch_size: int | None = None, path=None):
        self.model, self.meta, self.device = model, meta, device
        self.path = Path(path) if path else None
        self.arch = meta["arch"]
        self.contract: Contract = contract_of(meta)
        self.memory_format = memory_format_of(meta)
        self.batch_size = batch_size_of(meta, batch_size)

    @classmethod
    def open(
        cls, checkpoint: str | Path, device: str = "auto", batch_size: int | None = None, ckpt: dict | None = None
    ) -> LungModel:
        """The segmenter in ``checkpoint`` (``ckpt``: the file already read by ``read_checkpoint``)."""
        ckpt = read_checkpoint(checkpoint) if ckpt is None else ckpt
        task = ckpt.get("task", "classification")
        if task != TASK:
            raise ConfigError(
                f"{checkpoint}: a {task} checkpoint, not a lung segmenter; give one written by `covidnet lungs train`"
            )
        dev = resolve_device(device)
        model, meta = load_model(checkpoint, dev, tasks=(TASK,), ckpt=ckpt)
        return cls(model, meta, dev, batch_size, checkpoint)

    def batch_logits(self, batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(self.contract.standardise(batch)).to(self.device)
        return segment_logits(self.model, x, self.contract, self.memory_format).cpu().numpy()
