"""``covidnet predict`` and the model half of ``covidnet serve``: labels, class probabilities and a triage
decision for raw images, streamed in batches (constant memory for any number of files), through the same
preprocessing as training.

Two backends run a model, with one interface (``meta``, ``logits``, ``cam``):

- ``TorchBackend``: a checkpoint, on CPU or GPU, with Grad-CAM heat maps;
- ``OnnxBackend``: a model written by ``covidnet export``, on ONNX Runtime. Its graph takes the stored
  uint8 pixels and holds the normalisation, and its metadata holds the checkpoint's contract, so it
  needs neither PyTorch nor any flag that restates the checkpoint.

This module imports no torch at import time: ``pip install 'covidnet[onnx]'`` (no PyTorch) runs
``covidnet predict --onnx`` through it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable, Iterator, Protocol

import numpy as np

from .data.sources._common import IMAGE_SUFFIXES
from .errors import ConfigError, CovidnetError, UsageError

ONNX_FORMAT = "covidnet-onnx/1"  # the metadata key "covidnet" of an exported model holds this format marker
ONNX_META_KEY = "covidnet"


# --- the decision rule --------------------------------------------------------------------------------


def softmax(logits, temperature: float | None = None) -> np.ndarray:
    """Class probabilities (N, K) float32 from logits (N, K), after temperature scaling when fitted.
    Every path that turns logits into probabilities (eval, calibrate, predict, serve) calls this."""
    z = np.asarray(logits, dtype=np.float64) / (temperature or 1.0)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def triage_rule(meta: dict, threshold: str | None, operating_point: str | None = None) -> dict | None:
    """``--threshold CLASS=P`` if given; else the operating point stored in the checkpoint (which must be
    the one ``--operating-point`` names, when given); else None."""
    classes = meta["classes"]
    if threshold and operating_point:
        raise ConfigError("give --threshold or --operating-point, not both")
    stored = meta.get("operating_point")
    if operating_point and (not stored or stored["target"] != operating_point):
        have = f"it has {stored['target']}" if stored else "it has none"
        raise ConfigError(f"the checkpoint has no operating point {operating_point} ({have}); choose it on validation "
                          f"data first: covidnet calibrate --checkpoint CKPT --data DIR --operating-point {operating_point}")
    if threshold:
        name, _, value = threshold.rpartition("=")
        try:
            t = float(value)
        except ValueError:
            t = -1.0
        if name not in classes or not 0 <= t <= 1:
            raise ConfigError(f"--threshold {threshold!r}: write CLASS=P with CLASS one of {', '.join(classes)} and 0 <= P <= 1")
        return {"class": name, "threshold": t, "rule": f"--threshold {threshold}"}
    if stored:
        return {"class": stored["class"], "threshold": stored["threshold"], "rule": f"operating point {stored['target']} (validation)"}
    return None


def decide(probs: np.ndarray, classes: list[str], rule: dict | None) -> dict:
    """One image's result from its probabilities: label, every class's probability, triage."""
    out = {"label": classes[int(np.argmax(probs))], "probabilities": {c: float(v) for c, v in zip(classes, probs)}}
    if rule:
        pc = float(probs[classes.index(rule["class"])])
        out["triage"] = {**rule, "probability": pc, "flag": pc >= rule["threshold"]}
    return out


# --- backends -------------------------------------------------------------------------------------------


class Backend(Protocol):
    meta: dict  # classes, preprocess contract, temperature and operating point when calibrated, arch
    kind: str  # "torch" or "onnx"
    on_gpu: bool
    model_id: str  # arch + the first 12 hex digits of the model file's SHA-256

    def logits(self, images: np.ndarray) -> np.ndarray:
        """(B, S, S) uint8 stored pixels (``load_image`` at the contract's size) -> (B, K) float32 logits."""

    def cam(self, image: np.ndarray, class_idx: int, method: str = "gradcam") -> np.ndarray:
        """A (h, w) heat map in [0, 1] of one (S, S) uint8 image for ``class_idx``."""


def file_id(path: Path | str, arch: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return f"{arch}@{h.hexdigest()[:12]}"


class TorchBackend:
    """A checkpoint in PyTorch. ``device``: auto, cpu, cuda."""

    kind = "torch"

    def __init__(self, checkpoint: str | Path, device: str = "auto", batch_size: int = 16, threads: int | None = None):
        import torch

        from .checkpoint import load_model
        from .evaluate import _device, _memory_format

        if threads:
            torch.set_num_threads(threads)  # process-wide: torch has one intra-op pool
        self.device = _device(device)
        self.model, self.meta = load_model(checkpoint, self.device)
        self.memory_format = _memory_format(self.meta)
        self.batch_size = batch_size
        self.model_id = file_id(checkpoint, self.meta["arch"])
        self.on_gpu = self.device.type == "cuda"
        self._explainers: dict = {}

    def logits(self, images: np.ndarray) -> np.ndarray:
        import torch

        from .evaluate import predict_logits

        return predict_logits(self.model, lambda pos: torch.from_numpy(images[pos]), np.arange(len(images)),
                              self.batch_size, self.meta["preprocess"], self.device, self.memory_format).numpy()

    def cam(self, image: np.ndarray, class_idx: int, method: str = "gradcam") -> np.ndarray:
        from .explain import CamExplainer
        from .tensors import image_input

        if method not in self._explainers:
            self._explainers[method] = CamExplainer(self.model, method=method)
        return self._explainers[method](image_input(image, self.meta["preprocess"], self.device), int(class_idx))[0]


class OnnxBackend:
    """A ``covidnet export`` model on ONNX Runtime (CPU, or CUDA when onnxruntime-gpu is installed and
    ``device`` asks for it). ``threads``: intra-op threads (default: ONNX Runtime's, all cores)."""

    kind = "onnx"

    def __init__(self, path: str | Path, device: str = "auto", threads: int | None = None):
        try:
            import onnxruntime as ort
        except ModuleNotFoundError:
            raise CovidnetError("--onnx needs ONNX Runtime, which is not installed: pip install 'covidnet[onnx]'") from None
        path = Path(path)
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
            self.session = ort.InferenceSession(str(path), options, providers=[*providers, "CPUExecutionProvider"])
        except Exception as e:
            raise CovidnetError(f"{path}: not a loadable ONNX model ({type(e).__name__}: {str(e)[:160]})") from None
        raw = self.session.get_modelmeta().custom_metadata_map.get(ONNX_META_KEY)
        meta = json.loads(raw) if raw else {}
        if meta.get("format") != ONNX_FORMAT:
            raise CovidnetError(f"{path}: not a covidnet export (no {ONNX_FORMAT!r} metadata); write one with "
                                "covidnet export --checkpoint CKPT --out MODEL.onnx")
        self.meta = meta
        self.input_name = self.session.get_inputs()[0].name
        self.on_gpu = "CUDAExecutionProvider" in self.session.get_providers()
        self.model_id = file_id(path, meta["arch"] + ("-int8" if meta.get("int8") else ""))

    def logits(self, images: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.ascontiguousarray(images[:, None])})[0].astype(np.float32)

    def cam(self, image: np.ndarray, class_idx: int, method: str = "gradcam") -> np.ndarray:
        raise UsageError("heat maps need the model's gradients: use the PyTorch checkpoint (--checkpoint), not --onnx")


def open_backend(checkpoint: str | None = None, onnx: str | None = None, device: str = "auto",
                 batch_size: int = 16, threads: int | None = None) -> Backend:
    """The backend for exactly one of a checkpoint or an exported ONNX model; ``threads``: the CPU
    threads a forward pass uses (default: the runtime's, all cores)."""
    if bool(checkpoint) == bool(onnx):
        raise UsageError("give exactly one of --checkpoint CKPT or --onnx MODEL")
    if threads is not None and threads < 1:
        raise ConfigError(f"threads must be >= 1, not {threads}")
    return TorchBackend(checkpoint, device, batch_size, threads) if checkpoint else OnnxBackend(onnx, device, threads)


def describe(backend: Backend) -> dict:
    """What a client needs to know about the model: id, architecture, classes, the input contract,
    calibration and operating point."""
    m = backend.meta
    return {"model_id": backend.model_id, "runtime": backend.kind, "arch": m["arch"], "classes": m["classes"],
            "task": m.get("task") or "classification", "input": m["preprocess"], "temperature": m.get("temperature"),
            "operating_point": m.get("operating_point"), "int8": bool(m.get("int8", False)),
            "covidnet_version": m.get("version")}


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


def load_input(path: Path, pre: dict) -> np.ndarray:
    """A raw image file as the model's stored uint8 pixels: the one preprocessing path."""
    from .data.imageio import frontal_problem
    from .data.preprocess import TOP_CROP, load_image

    problem = frontal_problem(path)
    if problem:
        raise CovidnetError(f"{path}: {problem}")
    return load_image(path, pre["stored_size"], pre.get("top_crop", TOP_CROP))


def predict_paths(checkpoint: str | None, inputs: Iterable[str], batch_size: int = 16, device: str = "auto",
                  threshold: str | None = None, cam_dir: str | None = None, cam_method: str = "gradcam",
                  operating_point: str | None = None, onnx: str | None = None) -> Iterator[dict]:
    """One result per input image, in order: ``{"path", "status": "ok", "label", "probabilities",
    "triage", "cam"}`` or ``{"path", "status": "failed", "error"}``. ``checkpoint`` or ``onnx`` names
    the model."""
    if cam_dir and onnx:
        raise UsageError("--cam needs the model's gradients: use the PyTorch checkpoint (--checkpoint), not --onnx")
    backend = open_backend(checkpoint, onnx, device, batch_size)
    classes, pre = backend.meta["classes"], backend.meta["preprocess"]
    rule = triage_rule(backend.meta, threshold, operating_point)
    if cam_dir:
        Path(cam_dir).mkdir(parents=True, exist_ok=True)
    pending: list[tuple[Path, np.ndarray]] = []
    used_names: set[str] = set()

    def flush() -> Iterator[dict]:
        probs = softmax(backend.logits(np.stack([img for _, img in pending])), backend.meta.get("temperature"))
        for (path, img), p in zip(pending, probs):
            out = {"path": str(path), "status": "ok", **decide(p, classes, rule)}
            if cam_dir:
                heat = backend.cam(img, int(p.argmax()), cam_method)
                out["cam"] = str(_save_cam(Path(cam_dir), path, img, heat, used_names))
            yield out
        pending.clear()

    for path, error in iter_inputs(inputs):
        if error:
            yield {"path": str(path), "status": "failed", "error": error}
            continue
        try:
            pending.append((path, load_input(path, pre)))
        except CovidnetError as e:
            yield {"path": str(path), "status": "failed", "error": str(e)}
            continue
        if len(pending) >= batch_size:
            yield from flush()
    if pending:
        yield from flush()


def _save_cam(folder: Path, path: Path, img: np.ndarray, heat: np.ndarray, used: set[str]) -> Path:
    from .explain import save_overlay

    name, n = f"{path.stem}.cam.png", 1
    while name in used:
        n += 1
        name = f"{path.stem}-{n}.cam.png"
    used.add(name)
    save_overlay(folder / name, img, heat)
    return folder / name


__all__ = ["Backend", "OnnxBackend", "TorchBackend", "decide", "describe", "iter_inputs", "open_backend",
           "predict_paths", "softmax", "triage_rule"]
