"""Where and how a PyTorch model runs: device resolution, memory format, and the one loop that turns stored
uint8 pixels into a task's outputs (``predict_outputs``), which training's validation, ``covidnet eval``,
``predict``, the audit and the service all run.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ..contract import uint8_to_unit
from ..errors import ConfigError


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


@torch.no_grad()
def predict_outputs(
    model: torch.nn.Module,
    get_batch: Callable[[np.ndarray], torch.Tensor],
    positions: np.ndarray,
    batch_size: int,
    device: torch.device,
    forward: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """Outputs float32 on the CPU for ``positions``, ``batch_size`` at a time: ``get_batch(pos)`` gives their
    stored uint8 pixels (B, H, W), ``forward`` maps them as floats in [0, 1] (B, 1, H, W) to outputs (a
    task's ``forward`` on ``model``), in eval mode, with bf16 autocast on GPU as in training."""
    was_training = model.training
    model.eval()
    amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    out = []
    for k in range(0, len(positions), batch_size):
        x = uint8_to_unit(get_batch(positions[k : k + batch_size]).to(device, non_blocking=True))
        with amp:
            out.append(forward(x).float().cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, 0)
