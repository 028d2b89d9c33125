"""Checkpoints that describe themselves: architecture and its arguments, class names, the
preprocessing contract, training config and code version travel with the weights, so loading one
never needs flags that restate them; so does the ``task`` (classification when absent, severity,
risk) with what its head needs (score names and scale, risk bin edges). Written atomically (temporary file,
then rename)."""

from __future__ import annotations

from pathlib import Path

import torch

from . import __version__
from .errors import ConfigError, CovidnetError
from .files import atomic_path
from .models import create_model

FORMAT = "covidnet-checkpoint/1"


def save_checkpoint(path: Path, payload: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, "version": __version__, **payload}, tmp)


def read_checkpoint(path: Path | str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CovidnetError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise CovidnetError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CovidnetError(f"{path}: not a covidnet checkpoint (no {FORMAT!r} format marker)")
    return ckpt


def load_model(
    path: Path | str,
    device: str | torch.device = "cpu",
    tasks: tuple[str, ...] | None = ("classification",),
    ckpt: dict | None = None,
) -> tuple[torch.nn.Module, dict]:
    """The model a checkpoint describes, with its weights, in eval mode; and the checkpoint's metadata.
    ``tasks``: the tasks the caller handles (``task`` in the checkpoint, classification when absent);
    None for any. ``ckpt``: the file as ``read_checkpoint`` returned it, when the caller has read it."""
    ckpt = read_checkpoint(path) if ckpt is None else ckpt
    task = ckpt.get("task", "classification")
    if tasks is not None and task not in tasks:
        raise ConfigError(
            f"{path}: a {task} checkpoint, but this takes {' or '.join(tasks)} checkpoints "
            "(covidnet eval and predict take every task; calibrate, audit, export and serve only classification)"
        )
    model = create_model(ckpt["arch"], **ckpt["arch_args"])
    if ckpt.get("lung_model"):  # trained with --lungs crop|mask: the segmenter in front (covidnet.lungs.field)
        from .contract import contract_of
        from .lungs.field import wrap

        model = wrap(model, ckpt["lung_model"], contract_of(ckpt))
    model.load_state_dict(ckpt["model"])
    meta = {k: v for k, v in ckpt.items() if k not in ("model", "optimizer", "scheduler")}
    return model.to(device).eval(), meta
