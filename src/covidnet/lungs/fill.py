"""Opening a lung segmenter for a build: ``covidnet data build --lungs MODEL`` with a ``covidnet lungs train``
checkpoint (PyTorch) or its ``covidnet export`` (ONNX Runtime, no torch, faster on a CPU). Its caller opens it
with ``open_segmenter`` and hands it over (``build_dataset(cfg, segmenter=open_segmenter(cfg.lungs,
workers=cfg.processes))``): the build, a lower layer, never imports this package; it checks the segmenter
against its contract and draws the masks itself (``covidnet.data.build.lungs``)."""

from __future__ import annotations

from pathlib import Path

from ..runtime import LoadedModel as Segmenter
from ..runtime import load


def open_segmenter(
    path: str | Path,
    device: str = "auto",
    batch_size: int | None = None,
    threads: int | None = None,
    workers: int = 1,
) -> Segmenter:
    """The lung segmenter in ``path``: an exported ``.onnx`` on ONNX Runtime (``threads`` intra-op threads,
    default all cores), otherwise a checkpoint in PyTorch on ``device``. Anything else (a classifier, a file
    that is neither) is one line naming it. ``workers``: a build's processes; with several, the model runs one
    thread unless ``threads`` says otherwise (``load``'s ``threads``: an ONNX session's own, so the build
    segments that many batches side by side, on two cores about a fifth faster than one batch on two threads,
    a small network parallelising poorly within a batch; for a checkpoint, torch's, process-wide)."""
    if Path(path).suffix.lower() == ".onnx" and device == "auto":
        device = "cpu"
    if threads is None and workers > 1:
        threads = 1
    return load(path, device, batch_size, threads, tasks=("segmentation",))


__all__ = ["open_segmenter"]
