"""``torchrun``: every training command runs unchanged as one process or as one of a group (rank and world
size from the environment; DistributedDataParallel over NCCL on GPUs, gloo on CPUs; logging and checkpoints
on rank 0). Each process draws the same global batches (``train.sampler``) and takes its shard of each.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from ..runtime.device import resolve_device


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> Dist:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        return cls(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))

    def all_sum(self, values: list[float], device) -> list[float]:
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=device)
        torch.distributed.all_reduce(t)
        return t.tolist()

    def gather(self, obj):
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out


def shard(batch: np.ndarray, dist: Dist) -> np.ndarray:
    return np.array_split(batch, dist.world)[dist.rank]


def train_device(name: str, dist: Dist) -> torch.device:
    """evaluate's device resolution, with "auto" and "cuda" meaning this process's own GPU."""
    if name == "auto" and not torch.cuda.is_available():
        return torch.device("cpu")
    if name in ("auto", "cuda"):
        return resolve_device(f"cuda:{dist.local_rank}")
    return resolve_device(name)


def distributed(body, cfg, device_name: str):
    """``body(cfg, dist, device)`` in this process's place of a ``torchrun`` group (or alone): the process
    group set up before and torn down after; what every training command runs in."""
    dist = Dist.from_env()
    device = train_device(device_name, dist)
    if dist.world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        torch.distributed.init_process_group(backend)
    try:
        return body(cfg, dist, device)
    finally:
        if dist.world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def wrap_for_training(model: torch.nn.Module, dist: Dist, device: torch.device, compile: str) -> torch.nn.Module:
    """The model as a training step calls it: DistributedDataParallel under torchrun, ``torch.compile``d
    when ``compile`` is on (or auto, on a GPU)."""
    net = model
    if dist.world > 1:
        on_gpu = device.type == "cuda"
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if on_gpu else None)
    if compile == "on" or (compile == "auto" and device.type == "cuda"):
        net = torch.compile(net, dynamic=False)  # a few static shapes (batch sizes differ by one) beat dynamic kernels
    return net
