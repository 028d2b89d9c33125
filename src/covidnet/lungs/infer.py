"""A trained lung segmenter at work: stored uint8 pixels -> lung probability maps and masks at the
pixels' own size, through the checkpoint's preprocessing contract. ``covidnet lungs eval``, ``covidnet
lungs predict``, ``covidnet data build --lungs`` and training's validation all segment through
``segment``, so they feed a model exactly alike."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..checkpoint import load_model, read_checkpoint
from ..contract import Contract, contract_of
from ..data.lungmasks import BACKGROUND, LUNG
from ..errors import ConfigError, CovidnetError
from ..runtime import memory_format_of, resolve_device, uint8_to_unit

TASK = "lungs"  # the task a lungs checkpoint says it is
THRESHOLD = 0.5  # a pixel is lung when the model's probability is at least this


@torch.no_grad()
def segment(model, x: torch.Tensor, contract: Contract, memory_format=torch.contiguous_format) -> torch.Tensor:
    """Lung probabilities (B, H, W) float32 for stored pixels ``x`` (B, H, W) uint8 on the model's device:
    the contract's model input (resized to the model's side), the network, and its logits resized back to
    H x W (bilinear) before the sigmoid. bf16 autocast on GPU, as in training."""
    was_training = model.training
    model.eval()
    unit = uint8_to_unit(x)
    amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=x.device.type == "cuda")
    with amp:
        logits = model(contract.model_input(unit, memory_format)).float()
    if logits.shape[-2:] != x.shape[-2:]:
        logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
    model.train(was_training)
    return torch.sigmoid(logits[:, 0])


def to_mask(probabilities: np.ndarray) -> np.ndarray:
    """Probabilities -> a stored-form lung mask (uint8 0 background / 255 lung)."""
    return np.where(probabilities >= THRESHOLD, LUNG, BACKGROUND).astype(np.uint8)


class LungModel:
    """A ``covidnet lungs train`` checkpoint on a device, with its contract: ``probabilities`` and
    ``masks`` of stored uint8 images (an (N, S, S) array, or a built dataset's ``Store`` and its rows,
    read ``batch_size`` rows at a time)."""

    def __init__(self, model, meta: dict, device: torch.device, batch_size: int | None = None):
        self.model, self.meta, self.device = model, meta, device
        self.contract: Contract = contract_of(meta)
        self.memory_format = memory_format_of(meta)
        self.batch_size = batch_size or meta.get("train_config", {}).get("eval_batch_size", 32)

    @classmethod
    def open(cls, checkpoint: str | Path, device: str = "auto", batch_size: int | None = None) -> LungModel:
        task = read_checkpoint(checkpoint).get("task", "classification")
        if task != TASK:
            raise ConfigError(
                f"{checkpoint}: a {task} checkpoint, not a lung segmenter; give one written by `covidnet lungs train`"
            )
        dev = resolve_device(device)
        model, meta = load_model(checkpoint, dev, tasks=(TASK,))
        return cls(model, meta, dev, batch_size)

    @property
    def arch(self) -> str:
        return self.meta["arch"]

    def probabilities(self, images, rows: np.ndarray | None = None, progress: bool = False) -> np.ndarray:
        """(N, S, S) float32 lung probabilities of ``images`` (or a store's ``rows``), at their stored side."""
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
            x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
            out[pos] = segment(self.model, x, self.contract, self.memory_format).cpu().numpy()
        return out

    def masks(self, images, rows: np.ndarray | None = None, progress: bool = False) -> np.ndarray:
        """(N, S, S) uint8 lung masks (0 / 255) of ``images`` (or a store's ``rows``)."""
        return to_mask(self.probabilities(images, rows, progress))


def segment_store_rows(checkpoint: str | Path, folder: Path, contract: Contract, rows: np.ndarray, progress: bool):
    """``covidnet data build --lungs CKPT``: the model's lung masks for ``rows`` of the store being written
    in ``folder`` (its images.npy) into the same rows of its masks.npy, a batch at a time. The model must
    have been trained on the same top crop (the framing it learnt); another stored size is resized.
    Returns the report's ``predicted`` section."""
    from ..data.store import IMAGES_FILE, MASKS_FILE, RowFile
    from ..files import file_id

    lm = LungModel.open(checkpoint, "auto")
    if lm.contract.top_crop != contract.top_crop:
        raise CovidnetError(
            f"{checkpoint}: trained on a top crop of {lm.contract.top_crop}, but this build crops "
            f"{contract.top_crop}; build with --top-crop {lm.contract.top_crop} or train a segmenter on this crop"
        )
    images, masks = RowFile(folder / IMAGES_FILE), RowFile(folder / MASKS_FILE, writable=True)
    step = lm.batch_size
    starts = range(0, len(rows), step)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="lung masks", unit="batch", file=sys.stderr)
    for k in starts:
        part = rows[k : k + step]
        for row, mask in zip(part, lm.masks(images.read(part))):
            masks.write(int(row), mask)
    images.close()
    masks.close()
    return {"checkpoint": str(checkpoint), "model": file_id(checkpoint, lm.arch), "images": int(len(rows))}
