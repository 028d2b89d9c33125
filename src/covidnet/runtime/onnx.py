"""A model written by ``covidnet export``, on ONNX Runtime, for any task: its graph takes the stored uint8
pixels as floats and holds the contract's resizing and normalisation (and a segmenter's resizing of its
logits back to the stored side), and its metadata (the ``covidnet`` key) holds the checkpoint's, so it needs
neither PyTorch nor a flag that restates the checkpoint. This module imports no torch:
``pip install 'covidnet[onnx]'`` runs ``covidnet predict --onnx`` and ``data build --lungs MODEL.onnx``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..checkpoint import upgrade
from ..errors import ConfigError, CovidnetError
from .base import LoadedModel

ONNX_FORMAT = "covidnet-onnx/1"  # the metadata key "covidnet" of an exported model holds this format marker
ONNX_META_KEY = "covidnet"


def onnx_session(path: Path, device: str = "auto", threads: int | None = None):
    """An ONNX Runtime session of a ``covidnet export`` model and its metadata (``covidnet`` key, in today's
    form): CPU, or CUDA when onnxruntime-gpu is installed and ``device`` asks for it; ``threads``: intra-op
    threads (default: ONNX Runtime's, all cores). A missing runtime, file or metadata is one line naming it."""
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
    providers = ["CUDAExecutionProvider"] if device not in ("cpu",) and "CUDAExecutionProvider" in available else []
    try:
        session = ort.InferenceSession(str(path), options, providers=[*providers, "CPUExecutionProvider"])
    except Exception as e:
        raise CovidnetError(f"{path}: not a loadable ONNX model ({type(e).__name__}: {str(e)[:160]})") from None
    raw = session.get_modelmeta().custom_metadata_map.get(ONNX_META_KEY)
    try:
        meta = json.loads(raw) if raw else {}
    except ValueError:
        meta = {}
    if not isinstance(meta, dict) or meta.get("format") != ONNX_FORMAT:
        raise CovidnetError(
            f"{path}: not a covidnet export (no {ONNX_FORMAT!r} metadata); write one with "
            "covidnet export --checkpoint CKPT --out MODEL.onnx"
        )
    return session, upgrade(meta)


class OnnxModel(LoadedModel):
    """A ``covidnet export`` model on ONNX Runtime (``threads``: intra-op threads, default all cores). A
    session's ``run`` is thread-safe and releases the GIL, so batches may be run side by side (``concurrent``)."""

    kind = "onnx"
    concurrent = True

    def __init__(self, path: str | Path, device: str = "auto", threads: int | None = None, batch_size=None):
        self.session, meta = onnx_session(Path(path), device, threads)
        self.id_suffix = "-int8" if meta.get("int8") else ("-onnx" if meta.get("task") == "segmentation" else "")
        super().__init__(path, meta, batch_size)
        self.input_name = self.session.get_inputs()[0].name
        self.on_gpu = "CUDAExecutionProvider" in self.session.get_providers()

    def batch_logits(self, batch: np.ndarray) -> np.ndarray:
        """Stored pixels -> outputs; the contract's intensity standardisation (not in the graph) first."""
        x = np.ascontiguousarray(self.contract.standardise(np.asarray(batch))[:, None])
        out = self.session.run(None, {self.input_name: x})[0].astype(np.float32, copy=False)
        return out[:, 0] if out.ndim == 4 else out
