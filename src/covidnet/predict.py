"""``covidnet predict`` and the model half of ``covidnet serve``: for raw images, the task's result (a
label, class probabilities and a triage decision; severity scores; a risk bin), streamed in batches
(constant memory for any number of files), through the checkpoint's preprocessing contract.

Two backends run a model, with one interface (``meta``, ``contract``, ``task``, ``logits``, ``cam``):

- ``TorchBackend`` (``covidnet.runtime.LoadedModel``): a checkpoint, on CPU or GPU, with Grad-CAM heat maps;
- ``OnnxBackend``: a model written by ``covidnet export``, on ONNX Runtime. Its graph takes the stored
  uint8 pixels and holds the normalisation, and its metadata holds the checkpoint's contract, so it
  needs neither PyTorch nor any flag that restates the checkpoint.

This module imports no torch at import time: ``pip install 'covidnet[onnx]'`` (no PyTorch) runs
``covidnet predict --onnx`` through it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol

import numpy as np

from .contract import Contract, contract_of
from .errors import ConfigError, CovidnetError, UsageError
from .files import file_id
from .imageio import IMAGE_SUFFIXES, frontal_problem
from .tasks import Task, decide, softmax, task_from_meta, triage_rule

ONNX_FORMAT = "covidnet-onnx/1"  # the metadata key "covidnet" of an exported model holds this format marker
ONNX_META_KEY = "covidnet"


# --- backends -------------------------------------------------------------------------------------------


class Backend(Protocol):
    meta: dict  # classes, preprocess contract, temperature and operating point when calibrated, arch
    contract: Contract
    task: Task
    kind: str  # "torch" or "onnx"
    on_gpu: bool
    model_id: str  # arch + the first 12 hex digits of the model file's SHA-256

    def logits(self, images: np.ndarray) -> np.ndarray:
        """(B, S, S) uint8 stored pixels (``load_image`` at the contract's size) -> (B, K) float32 logits."""

    def cam(self, image: np.ndarray, class_idx: int, method: str = "gradcam") -> np.ndarray:
        """A (h, w) heat map in [0, 1] of one (S, S) uint8 image for ``class_idx``."""


def onnx_session(path: Path, device: str = "auto", threads: int | None = None):
    """An ONNX Runtime session of a ``covidnet export`` model and its metadata (``covidnet`` key): CPU, or
    CUDA when onnxruntime-gpu is installed and ``device`` asks for it; ``threads``: intra-op threads
    (default: ONNX Runtime's, all cores). A missing runtime, file or metadata is one line naming it."""
    try:
        import onnxruntime as ort
    except ModuleNotFoundError:
        raise CovidnetError("--onnx needs ONNX Runtime, which is not installed: pip install 'covidnet[onnx]'") from None
    if not path.is_file():
        raise CovidnetError(f"{path}: ONNX model not found")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    available = ort.get_available_providers()
    if device.startswith("cuda") and "CUDAExecutionProvider" not in available:
        raise ConfigError(f"--device {device}: this ONNX Runtime has no CUDA provider (pip install onnxruntime-gpu)")
    providers = ["CUDAExecutionProvider"] if device != "cpu" and "CUDAExecutionProvider" in available else []
    try:
        session = ort.InferenceSession(str(path), options, providers=[*providers, "CPUExecutionProvider"])
    except Exception as e:
        raise CovidnetError(f"{path}: not a loadable ONNX model ({type(e).__name__}: {str(e)[:160]})") from None
    raw = session.get_modelmeta().custom_metadata_map.get(ONNX_META_KEY)
    meta = json.loads(raw) if raw else {}
    if meta.get("format") != ONNX_FORMAT:
        raise CovidnetError(
            f"{path}: not a covidnet export (no {ONNX_FORMAT!r} metadata); write one with "
            "covidnet export --checkpoint CKPT --out MODEL.onnx"
        )
    return session, meta


class OnnxBackend:
    """A ``covidnet export`` model on ONNX Runtime (CPU, or CUDA when onnxruntime-gpu is installed and
    ``device`` asks for it). ``threads``: intra-op threads (default: ONNX Runtime's, all cores)."""

    kind = "onnx"

    def __init__(self, path: str | Path, device: str = "auto", threads: int | None = None):
        path = Path(path)
        self.session, meta = onnx_session(path, device, threads)
        self.meta = meta
        self.contract = contract_of(meta)
        self.task = task_from_meta(meta)
        self.input_name = self.session.get_inputs()[0].name
        self.on_gpu = "CUDAExecutionProvider" in self.session.get_providers()
        self.model_id = file_id(path, meta["arch"] + ("-int8" if meta.get("int8") else ""))

    def logits(self, images: np.ndarray) -> np.ndarray:
        """Stored pixels -> logits; the contract's intensity standardisation (not in the graph) first."""
        x = np.ascontiguousarray(self.contract.standardise(np.asarray(images))[:, None])
        return self.session.run(None, {self.input_name: x})[0].astype(np.float32)

    def cam(self, image: np.ndarray, class_idx: int, method: str = "gradcam") -> np.ndarray:
        raise UsageError("heat maps need the model's gradients: use the PyTorch checkpoint (--checkpoint), not --onnx")


def TorchBackend(
    checkpoint: str | Path,
    device: str = "auto",
    batch_size: int = 16,
    threads: int | None = None,
    tasks: tuple[str, ...] | None = None,
) -> Backend:
    """A checkpoint in PyTorch (``covidnet.runtime.LoadedModel``). ``device``: auto, cpu, cuda."""
    from .runtime import LoadedModel

    return LoadedModel.open(checkpoint, device, tasks=tasks, batch_size=batch_size, threads=threads)


def open_backend(
    checkpoint: str | None = None,
    onnx: str | None = None,
    device: str = "auto",
    batch_size: int = 16,
    threads: int | None = None,
    tasks: tuple[str, ...] | None = None,
) -> Backend:
    """The backend for exactly one of a checkpoint or an exported ONNX model; ``threads``: the CPU
    threads a forward pass uses (default: the runtime's, all cores); ``tasks``: the tasks the caller
    handles (None: any)."""
    if bool(checkpoint) == bool(onnx):
        raise UsageError("give exactly one of --checkpoint CKPT or --onnx MODEL")
    if threads is not None and threads < 1:
        raise ConfigError(f"threads must be >= 1, not {threads}")
    backend = (
        TorchBackend(checkpoint, device, batch_size, threads, tasks)
        if checkpoint
        else OnnxBackend(onnx, device, threads)
    )
    if tasks is not None and backend.task.name not in tasks:
        raise ConfigError(f"{onnx}: a {backend.task.name} model, but this takes {' or '.join(tasks)} models")
    return backend


def describe(backend: Backend) -> dict:
    """What a client needs to know about the model: id, architecture, classes, the input contract,
    calibration and operating point."""
    m = backend.meta
    return {
        "model_id": backend.model_id,
        "runtime": backend.kind,
        "arch": m["arch"],
        "classes": m["classes"],
        "task": backend.task.name,
        "input": backend.contract.to_dict(),
        "temperature": m.get("temperature"),
        "operating_point": m.get("operating_point"),
        "int8": bool(m.get("int8", False)),
        "covidnet_version": m.get("version"),
    }


# --- streaming prediction -----------------------------------------------------------------------------


def iter_inputs(inputs: Iterable[str]) -> Iterator[tuple[Path, str | None]]:
    """Files named, and image files under folders named (sorted, recursive). A missing path is yielded
    with its error, so it is reported, not skipped."""
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            for f in sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES):
                yield f, None
        elif p.is_file():
            yield p, None
        else:
            yield p, f"{p}: no such file or folder"


def load_input(path: Path, contract: Contract) -> np.ndarray:
    """A raw image file as the model's stored uint8 pixels: the frontal-view check, then the contract."""
    problem = frontal_problem(path)
    if problem:
        raise CovidnetError(f"{path}: {problem}")
    return contract.load(path)


def read_batches(inputs: Iterable[str], contract: Contract, batch_size: int) -> Iterator[list[tuple]]:
    """Batches of (path, stored uint8 image or None, error or None), in input order; a file that is
    missing, unreadable or a lateral view carries its error instead of an image."""
    batch = []
    for path, error in iter_inputs(inputs):
        img = None
        if not error:
            try:
                img = load_input(path, contract)
            except CovidnetError as e:
                error = str(e)
        batch.append((path, img, error))
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


class CamFiles:
    """The one rule for naming the files prediction writes per input: ``STEM.cam.png``, or ``STEM.TAG.cam.png``
    for a task with several outputs to explain; a second input of the same stem gets ``STEM-2…``.
    ``suffix``: another kind of file (``covidnet lungs predict``'s ``STEM.lungs.png``)."""

    def __init__(self, folder: str | Path, suffix: str = ".cam.png"):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.used: set[str] = set()
        self.suffix = suffix

    def path(self, stem: str, tag: str | None) -> Path:
        suffix = f".{tag}{self.suffix}" if tag else self.suffix
        name, n = f"{stem}{suffix}", 1
        while name in self.used:
            n += 1
            name = f"{stem}-{n}{suffix}"
        self.used.add(name)
        return self.folder / name


def predict_paths(
    checkpoint: str | None,
    inputs: Iterable[str],
    batch_size: int = 16,
    device: str = "auto",
    threshold: str | None = None,
    cam_dir: str | None = None,
    cam_method: str = "gradcam",
    operating_point: str | None = None,
    onnx: str | None = None,
) -> Iterator[dict]:
    """One result per input image, in order: ``{"path", "status": "ok", …the task's fields, "cam"}``
    or ``{"path", "status": "failed", "error"}``. ``checkpoint`` or ``onnx`` names the model.
    Classification: ``label``, ``probabilities``, ``triage``; severity: ``scores`` and ``scale``; risk:
    ``bin``, ``bin_index``, ``probabilities``. With ``cam_dir``, a Grad-CAM overlay per explained output
    (``cam``: its path, or ``{tag: path}`` where the task explains several outputs)."""
    if cam_dir and onnx:
        raise UsageError("--cam needs the model's gradients: use the PyTorch checkpoint (--checkpoint), not --onnx")
    backend = open_backend(checkpoint, onnx, device, batch_size)
    task = backend.task
    rule = task.decision_rule(backend.meta, threshold, operating_point)
    cams = CamFiles(cam_dir) if cam_dir else None
    if cams:
        from .explain import save_overlay  # torch: only with heat maps, so --onnx runs without it
    for batch in read_batches(inputs, backend.contract, batch_size):
        ok = [img for _, img, err in batch if err is None]
        results = iter(task.results(backend.logits(np.stack(ok)), backend.meta, rule) if ok else [])
        for path, img, err in batch:
            if err is not None:
                yield {"path": str(path), "status": "failed", "error": err}
                continue
            r = {"path": str(path), "status": "ok", **next(results)}
            if cams:
                files = {
                    tag: str(save_overlay(cams.path(path.stem, tag), img, backend.cam(img, output, cam_method)))
                    for output, tag in task.cam_outputs(r)
                }
                r["cam"] = next(iter(files.values())) if len(files) == 1 else files
            yield r


def predict_task_paths(
    checkpoint: str,
    inputs: Iterable[str],
    batch_size: int = 16,
    device: str = "auto",
    cam_dir: str | None = None,
    cam_method: str = "gradcam",
) -> Iterator[dict]:
    """``predict_paths`` for a checkpoint (the name the severity and risk heads had)."""
    return predict_paths(checkpoint, inputs, batch_size, device, cam_dir=cam_dir, cam_method=cam_method)


__all__ = [
    "Backend",
    "CamFiles",
    "OnnxBackend",
    "TorchBackend",
    "decide",
    "describe",
    "iter_inputs",
    "load_input",
    "open_backend",
    "predict_paths",
    "predict_task_paths",
    "read_batches",
    "softmax",
    "triage_rule",
]
