"""Checkpoints that describe themselves: architecture and its arguments, class names, the
preprocessing contract, training config and code version travel with the weights, so loading one
never needs flags that restate them; so does the ``task`` (classification when absent, severity,
risk) with what its head needs (score names and scale, risk bin edges). Written atomically (temporary file,
then rename).

Read without running code: ``read_checkpoint`` is the one place a ``.pt`` is opened, with
``torch.load(weights_only=True)``, whose unpickler builds tensors, their storages and plain containers
(dict, list, tuple, str, numbers, None) and refuses every other Python global before it is imported.
Everything a checkpoint holds is of those types (docs/reliability.md), so nothing more is allowed."""

from __future__ import annotations

import pickle
import pickletools
import re
import warnings
from pathlib import Path

import torch

from . import __version__
from .errors import ConfigError, CovidnetError, UnsafeCheckpointError
from .files import atomic_path
from .models import create_model

FORMAT = "covidnet-checkpoint/1"


def save_checkpoint(path: Path, payload: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, "version": __version__, **payload}, tmp)


def read_checkpoint(path: Path | str) -> dict:
    """The checkpoint at ``path`` as a dict, read with torch's restricted unpickler: a file that names any
    Python object other than tensors and plain containers is refused (``UnsafeCheckpointError``) before
    that object is imported, so a crafted file cannot run code here."""
    path = Path(path)
    if not path.is_file():
        raise CovidnetError(f"{path}: checkpoint not found")
    try:
        with warnings.catch_warnings():  # a plain pickle's protocol: the refusal below says what matters
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        unsafe = _unsafe(path, e)
        if unsafe:
            raise UnsafeCheckpointError(
                f"{path}: refused: it {unsafe}; a covidnet checkpoint holds only tensors and plain containers, "
                "and unpickling anything else could run code; ask its author for a checkpoint written by "
                "`covidnet train`"
            ) from None
        detail = " ".join(str(e).split())[:160] or type(e).__name__
        raise CovidnetError(f"{path}: not a readable checkpoint ({type(e).__name__}: {detail})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CovidnetError(f"{path}: not a covidnet checkpoint (no {FORMAT!r} format marker)")
    return ckpt


def _unsafe(path: Path, error: Exception) -> str | None:
    """What the restricted unpickler refused, in words, or None when the file failed for another reason
    (not a pickle at all). The globals are read from the pickle (``pickletools``: nothing is imported):
    torch's own scan of a zip checkpoint, torch's message for its legacy format, our scan of a plain pickle."""
    if not isinstance(error, pickle.UnpicklingError) or "Weights only load failed" not in str(error):
        return None
    try:
        names = list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # not a zip checkpoint
        names = re.findall(r"GLOBAL ([\w.]+)", str(error))[:1] or _pickle_globals(path.read_bytes())
    if not names:
        return None
    return "would import " + ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _pickle_globals(data: bytes) -> list[str]:
    """The ``module.name`` of every global a plain pickle imports, read op by op without running it;
    [] for bytes that are not a pickle."""
    names, strings = [], []
    try:
        for op, arg, _ in pickletools.genops(data):
            if "UNICODE" in op.name or "STRING" in op.name:
                strings.append(str(arg))
            elif op.name in ("GLOBAL", "INST"):
                names.append(str(arg).replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                names.append(".".join(strings[-2:]))
    except Exception:
        return []
    return list(dict.fromkeys(names))


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
