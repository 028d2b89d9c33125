"""A trained model at work: device resolution, memory format, and one loaded-model object that turns
stored uint8 pixels into logits, pooled features and heat maps, through the checkpoint's own
preprocessing contract. Evaluation, prediction, the audit, export, the HTTP service and training's
validation all call it, so they feed a model exactly alike.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .checkpoint import load_model
from .contract import Contract, contract_of
from .errors import ConfigError
from .tasks import Task, task_from_meta


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` (CUDA when there is one, else the CPU), ``cpu``, ``cuda``, ``cuda:N``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: no CUDA device is available")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name!r}: write auto, cpu, cuda or cuda:N") from None


def memory_format_of(meta: dict) -> torch.memory_format:
    """The memory format a checkpoint was trained in (channels-last by default on every device)."""
    return torch.channels_last if meta.get("memory_format") == "channels_last" else torch.contiguous_format


def uint8_to_unit(x: torch.Tensor) -> torch.Tensor:
    """(B, H, W) uint8 -> (B, 1, H, W) float in [0, 1]."""
    return x.unsqueeze(1).float().div_(255)


def rows_reader(images, rows: np.ndarray | None = None, transform=None) -> Callable[[np.ndarray], torch.Tensor]:
    """``get_batch`` for ``predict_logits`` over stored pixels: a built dataset's ``Store`` (read by row,
    ``Store.read``, so a store of any size is never mapped or read whole) or an (N, S, S) uint8 array;
    ``transform`` applied to each batch as read (the contract's intensity standardisation)."""

    def get(pos: np.ndarray) -> torch.Tensor:
        which = pos if rows is None else rows[pos]
        batch = images.read(which) if hasattr(images, "read") else np.ascontiguousarray(images[which])
        return torch.from_numpy(transform(batch) if transform else batch)

    return get


@torch.no_grad()
def predict_logits(
    model: torch.nn.Module,
    get_batch: Callable[[np.ndarray], torch.Tensor],
    positions: np.ndarray,
    batch_size: int,
    contract: Contract,
    device: torch.device,
    memory_format=torch.contiguous_format,
    forward: Callable | None = None,
) -> torch.Tensor:
    """Outputs (N, K) float32 on the CPU for ``positions``; ``get_batch(pos)`` gives their stored uint8
    pixels (B, H, W). bf16 autocast on GPU, as in training. ``forward`` replaces ``model`` (e.g. a
    model's pooled features)."""
    was_training = model.training
    model.eval()
    run = forward or model
    amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    out = []
    for k in range(0, len(positions), batch_size):
        x = uint8_to_unit(get_batch(positions[k : k + batch_size]).to(device, non_blocking=True))
        with amp:
            out.append(run(contract.model_input(x, memory_format)).float().cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, 0)


class LoadedModel:
    """A checkpoint's network on a device, with its metadata, task and contract.

    ``logits`` and ``features`` take stored uint8 pixels: an (N, S, S) array, or a built dataset's
    ``Store`` with the ``rows`` to read (``batch_size`` rows at a time); ``cam`` a heat map of one image
    for one output. It is also
    the PyTorch backend of ``covidnet predict`` and ``covidnet serve`` (``kind``, ``on_gpu``,
    ``model_id``)."""

    kind = "torch"

    def __init__(
        self,
        model: torch.nn.Module,
        meta: dict,
        device: torch.device,
        batch_size: int | None = None,
        model_id: str | None = None,
    ):
        self.model, self.meta, self.device = model, meta, device
        self.contract: Contract = contract_of(meta)
        self.task: Task = task_from_meta(meta)
        self.memory_format = memory_format_of(meta)
        self.batch_size = batch_size or meta.get("train_config", {}).get("eval_batch_size", 64)
        self.on_gpu = device.type == "cuda"
        self.model_id = model_id or meta["arch"]
        self._explainers: dict = {}

    @classmethod
    def open(
        cls,
        checkpoint: str | Path,
        device: str = "auto",
        tasks: tuple[str, ...] | None = None,
        batch_size: int | None = None,
        threads: int | None = None,
        ckpt: dict | None = None,
    ) -> LoadedModel:
        """The model of ``checkpoint``; ``tasks`` the tasks the caller handles (None: any); ``ckpt`` the file
        already read (``read_checkpoint``)."""
        from .files import file_id

        if threads:
            torch.set_num_threads(threads)  # process-wide: torch has one intra-op pool
        dev = resolve_device(device)
        model, meta = load_model(checkpoint, dev, tasks=tasks, ckpt=ckpt)
        return cls(model, meta, dev, batch_size, file_id(checkpoint, meta["arch"]))

    @property
    def classes(self) -> list[str]:
        return list(self.meta.get("classes") or self.task.outputs)

    def outputs(self, images, rows: np.ndarray | None = None, forward: Callable | None = None) -> torch.Tensor:
        """The network's outputs (N, K) for ``images`` (or its ``rows``), float32 on the CPU; ``forward``
        in place of the whole network (e.g. its pooled features)."""
        n = len(rows) if rows is not None else len(images)
        reader = rows_reader(images, rows, self.contract.standardise)
        return predict_logits(
            self.model,
            reader,
            np.arange(n),
            self.batch_size,
            self.contract,
            self.device,
            self.memory_format,
            forward=forward,
        )

    def logits(self, images, rows: np.ndarray | None = None) -> np.ndarray:
        """As ``outputs``, as a NumPy array (the interface the ONNX backend shares)."""
        return self.outputs(images, rows).numpy()

    def features(self, images, rows: np.ndarray | None = None) -> np.ndarray:
        """Frozen features: the last feature map averaged over space, (N, C)."""
        pooled = lambda x: self.model.forward_features(x).float().mean((2, 3))  # noqa: E731
        return self.outputs(images, rows, forward=pooled).numpy()

    def cam(self, image: np.ndarray, output: int, method: str = "gradcam") -> np.ndarray:
        """A (h, w) heat map in [0, 1] of one (S, S) uint8 image for output ``output``."""
        return self.cams(np.asarray(image)[None], [int(output)], method)[0]

    def cams(self, images: np.ndarray, outputs=None, method: str = "gradcam") -> np.ndarray:
        """(B, h, w) heat maps in [0, 1] at the model's input side, one per (S, S) uint8 image of ``images``,
        each for its entry of ``outputs`` (None: each image's predicted class)."""
        from .explain import CamExplainer

        if method not in self._explainers:
            self._explainers[method] = CamExplainer(self.model, method=method)
        x = uint8_to_unit(torch.from_numpy(self.contract.standardise(np.array(images))).to(self.device))
        return self._explainers[method](self.contract.model_input(x, self.memory_format), outputs)

    def check_store(self, store, where: str) -> None:
        self.contract.check_store(store, where)
