"""A trained model at work: ``load(path)`` gives one object for any task (classification, severity, risk,
segmentation) and either backend (a checkpoint ``.pt`` in PyTorch, or a ``covidnet export`` ``.onnx`` on ONNX
Runtime), with its contract, its task, ``predict(images)``, and the logits, features and heat maps a
researcher needs (``base.LoadedModel``). Evaluation, prediction, the audit, the service, export, the dataset
build's lung masks and training's validation all run models through this package, so they feed a model
exactly alike.

* ``base``: what every loaded model is (no torch);
* ``pytorch``: a checkpoint's network (``TorchModel``); ``onnx``: an export (``OnnxModel``, no torch);
* ``device``: device resolution, memory format, and the loop from stored pixels to outputs.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError, UsageError
from .base import LoadedModel


def load(
    path: str | Path,
    device: str = "auto",
    batch_size: int | None = None,
    threads: int | None = None,
    tasks: tuple[str, ...] | None = None,
    backend: str | None = None,
) -> LoadedModel:
    """The model in ``path``: a ``.onnx`` written by ``covidnet export`` on ONNX Runtime, anything else a
    checkpoint in PyTorch. ``device``: auto, cpu, cuda or cuda:N; ``batch_size``: images a forward pass takes
    (default: the batch its training validated with); ``threads``: CPU threads a forward pass uses (default:
    the runtime's, all cores); ``tasks``: the tasks the caller handles (None: any), another is one line;
    ``backend``: "onnx" or "torch" whatever the file's name (None: by its suffix)."""
    if threads is not None and threads < 1:
        raise ConfigError(f"threads must be >= 1, not {threads}")
    if backend == "onnx" or (backend is None and Path(path).suffix.lower() == ".onnx"):
        from .onnx import OnnxModel

        model: LoadedModel = OnnxModel(path, device, threads, batch_size)
    else:
        from .pytorch import TorchModel

        model = TorchModel.open(path, device, batch_size, threads)
    if tasks is not None and model.task.name not in tasks:
        raise ConfigError(f"{path}: a {model.task.name} model, but this takes {' or '.join(tasks)} models")
    return model


def load_either(checkpoint: str | None, onnx: str | None, **kw) -> LoadedModel:
    """``load`` of exactly one of a checkpoint (``--checkpoint``) or an export (``--onnx``)."""
    if bool(checkpoint) == bool(onnx):
        raise UsageError("give exactly one of --checkpoint CKPT or --onnx MODEL")
    return load(checkpoint or onnx, backend="onnx" if onnx else "torch", **kw)


__all__ = ["LoadedModel", "load", "load_either"]
