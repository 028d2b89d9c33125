"""Checkpoints that describe themselves: the architecture and its arguments (so ``create_model(arch,
**arch_args)`` rebuilds the network of any task, a lung-field classifier included), the ``task`` with what
its head needs (class names, score names and scale, risk bin edges), the preprocessing contract, the
training config, the best validation figure (``best_score``: the monitored figure, its direction, its best
value and epoch), and the code version travel with the weights, so
loading one never needs flags that restate them. Written atomically (temporary file, then rename).

Checkpoints written by earlier versions are read into today's form by ``upgrade`` (ONNX exports' metadata
too): a lung-field classifier recorded as its classifier's arch plus ``lung_model`` becomes the registered
``lung-field`` model; the lung segmenter's task ``lungs`` is now ``segmentation``; ``best_val_loss`` and
``best_val_dice`` become ``best_score``; a torchvision baseline trained from ``--init imagenet`` recorded
``weights="imagenet"`` among its arguments, which would download ImageNet's weights again to rebuild it (the
checkpoint holds its own), and loses it. torch is imported only to read and write, so ``upgrade`` runs without it.

Read without running code: ``read_checkpoint`` is the one place a checkpoint is opened (the ``[pretrained]``
extra's ImageNet weights are read the same way, ``models.efficientnet``), with
``torch.load(weights_only=True)``, whose unpickler builds tensors, their storages and plain containers
(dict, list, tuple, str, numbers, None) and refuses every other Python global before it is imported.
Everything a checkpoint holds is of those types (docs/reliability.md), so nothing more is allowed.
"""

from __future__ import annotations

import pickle
import pickletools
import re
import warnings
from pathlib import Path

from . import __version__
from .errors import ConfigError, CovidnetError, UnsafeCheckpointError
from .files import atomic_path

FORMAT = "covidnet-checkpoint/1"
LUNG_FIELD = "lung-field"  # the registry's name of a classifier behind a frozen segmenter
OLD_TASK_NAMES = {"lungs": "segmentation"}  # what earlier versions called a task


def save_checkpoint(path: Path, payload: dict) -> None:
    import torch

    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, "version": __version__, **payload}, tmp)


def read_checkpoint(path: Path | str) -> dict:
    """The checkpoint at ``path`` as a dict, in today's form (``upgrade``); one line for a file that is
    missing, unreadable or not a covidnet checkpoint. Read with torch's restricted unpickler: a file that
    names any Python object other than tensors and plain containers is refused (``UnsafeCheckpointError``)
    before that object is imported, so a crafted file cannot run code here."""
    import torch

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
    return upgrade(ckpt)


def _unsafe(path: Path, error: Exception) -> str | None:
    """What the restricted unpickler refused, in words, or None when the file failed for another reason
    (not a pickle at all). The globals are read from the pickle (``pickletools``: nothing is imported):
    torch's own scan of a zip checkpoint, torch's message for its legacy format, our scan of a plain pickle."""
    import torch

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


def upgrade(meta: dict) -> dict:
    """A checkpoint's (or an export's) metadata written by an earlier version, in today's form; today's
    is returned as it is. See the module's docstring for what changed."""
    meta = dict(meta)
    if meta.get("task") in OLD_TASK_NAMES:
        meta["task"] = OLD_TASK_NAMES[meta["task"]]
    if meta.get("lung_model"):  # before the lung-field classifier was a registered model
        lung, contract, args = meta.pop("lung_model"), meta["preprocess"], meta["arch_args"]
        meta["arch_args"] = {
            "num_classes": args["num_classes"],
            "in_channels": args["in_channels"],
            "classifier": {"arch": meta["arch"], "arch_args": args},
            "segmenter": lung,
            "mode": contract["lungs"],
            "margin": contract.get("lung_margin", 0.03),
            "mean": list(contract["mean"]),
            "std": list(contract["std"]),
        }
        meta["arch"] = LUNG_FIELD
    args = meta.get("arch_args") or {}
    if "weights" in args:  # a torchvision baseline of --init imagenet: its weights are in the checkpoint
        meta["arch_args"] = args = {k: v for k, v in args.items() if k != "weights"}
    inner = args.get("classifier")
    if isinstance(inner, dict) and "weights" in inner.get("arch_args", {}):  # the same, behind a segmenter
        inner = {**inner, "arch_args": {k: v for k, v in inner["arch_args"].items() if k != "weights"}}
        meta["arch_args"] = {**args, "classifier": inner}
    for key, mode in (("best_val_loss", "min"), ("best_val_dice", "max")):
        if key in meta and "best_score" not in meta:
            meta["best_score"] = {"metric": key.removeprefix("best_"), "mode": mode, "value": meta.pop(key)}
    return meta


def classifier_arch(meta: dict) -> str:
    """The architecture of the network that classifies: the arch, or a lung-field model's classifier's."""
    return meta["arch_args"]["classifier"]["arch"] if meta["arch"] == LUNG_FIELD else meta["arch"]


def network(ckpt: dict, device="cpu", tasks: tuple[str, ...] | None = None, path: str | Path = "checkpoint"):
    """The network ``ckpt`` (as ``read_checkpoint`` returned it) describes, with its weights, on ``device``, in
    eval mode. ``tasks``: the tasks the caller handles (None: any); another is refused in one line."""
    from .models import create_model

    task = ckpt.get("task", "classification")
    if tasks is not None and task not in tasks:
        raise ConfigError(f"{path}: a {task} checkpoint, but this takes {' or '.join(tasks)} checkpoints")
    model = create_model(ckpt["arch"], **ckpt["arch_args"])
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval()


def metadata(ckpt: dict) -> dict:
    """Everything of a checkpoint but its weights and its optimiser's and scheduler's state."""
    return {k: v for k, v in ckpt.items() if k not in ("model", "optimizer", "scheduler", "adversary")}
