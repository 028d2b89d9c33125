"""``covidnet predict``: for raw images, the task's result (a label, class probabilities and a triage decision;
severity scores; a risk bin), streamed in batches (constant memory for any number of files), through the
model's own preprocessing contract, by a checkpoint (with Grad-CAM heat maps) or its ONNX export
(``covidnet.runtime.load``). The files are read as the service reads its uploads: the frontal-view check, then
the contract.

This module imports no torch at import time: ``pip install 'covidnet[onnx]'`` (no PyTorch) runs
``covidnet predict --onnx`` through it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import option
from .contract import Contract
from .errors import ConfigError, CovidnetError, UsageError
from .imageio import IMAGE_SUFFIXES, frontal_problem
from .runtime import load_either

ONNX_FORMAT = "covidnet-onnx/1"  # the metadata key "covidnet" of an exported model holds this format marker
ONNX_META_KEY = "covidnet"


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


@dataclass
class PredictConfig:
    """``covidnet predict``: raw images through a checkpoint or its ONNX export."""

    inputs: list[str] = option(help="image files, or folders walked recursively", metavar="IMAGE_OR_DIR",
                               positional=True)  # fmt: skip
    checkpoint: str | None = option(None, "a PyTorch checkpoint (train's best.pt)")
    onnx: str | None = option(
        None, "a model written by `covidnet export` (ONNX Runtime; PyTorch not needed)", metavar="MODEL"
    )
    json: bool = option(False, "one JSON object per image, one per line")
    cam: str | None = option(None, "write a heat-map overlay PNG per image to OUT_DIR", metavar="OUT_DIR")
    cam_method: str = option("gradcam", "gradcam or gradcam++")
    threshold: str | None = option(
        None,
        "flag an image when P(CLASS) >= P, e.g. COVID-19=0.2 (default: the checkpoint's operating point, if "
        "calibrated)",
        metavar="CLASS=P",
    )
    operating_point: str | None = option(
        None, "use the operating point stored by `covidnet calibrate` for this target", metavar="sensitivity=0.95"
    )
    batch_size: int = option(16, "images a forward pass takes")
    device: str = option("auto", "auto, cpu, cuda")
    progress: bool = option(True, "no progress bar", flag="--quiet", negate=True)


def predict_paths(cfg: PredictConfig) -> Iterator[dict]:
    """One result per input image, in order: ``{"path", "status": "ok", …the task's fields, "cam"}``
    or ``{"path", "status": "failed", "error"}``. ``checkpoint`` or ``onnx`` names the model.
    Classification: ``label``, ``probabilities``, ``triage``; severity: ``scores`` and ``scale``; risk:
    ``bin``, ``bin_index``, ``probabilities``. With ``cam``, a Grad-CAM overlay per explained output
    (``cam``: its path, or ``{tag: path}`` where the task explains several outputs)."""
    inputs, batch_size, cam_dir, cam_method, onnx = cfg.inputs, cfg.batch_size, cfg.cam, cfg.cam_method, cfg.onnx
    if cam_dir and onnx:
        raise UsageError("--cam needs the model's gradients: use the PyTorch checkpoint (--checkpoint), not --onnx")
    backend = load_either(cfg.checkpoint, onnx, device=cfg.device, batch_size=batch_size)
    task = backend.task
    if task.not_predicted:
        raise ConfigError(f"{backend.path}: {task.not_predicted}")
    rule = task.decision_rule(backend.meta, cfg.threshold, cfg.operating_point)
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


__all__ = ["CamFiles", "PredictConfig", "iter_inputs", "load_input", "predict_paths", "read_batches"]
