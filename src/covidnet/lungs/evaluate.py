"""``covidnet lungs eval`` and ``covidnet lungs predict``.

Evaluation reads a built dataset's split: the images with an annotated lung mask (never a predicted
one), segmented by the checkpoint or its ONNX export (``covidnet.load``) at the stored side, scored by
``covidnet.metrics.segmentation`` (Dice, IoU and HD95 of both lungs and of each, the annotation's ignore
pixels left out) with 95 % intervals from resampling patients; beside them, what a fixed box scores on
the same images, when one is given (the CLI gives the audit's ``LUNG_BOX``). Memory stays one batch: the
worst cases are segmented again for the page rather than kept.

Prediction reads raw files (``covidnet.predict.read_batches``: the frontal-view check, then the
contract) and writes each one's mask as a PNG of the file's own pixel size (``Contract.uncrop``: 0 where
the contract crops the image away), 0 background / 255 lung like the V7 Labs masks; with ``overlay``, a
PNG of the image with the mask over it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import option
from ..contract import is_lung
from ..data.lungmasks import IGNORE, LUNG
from ..data.store import open_store
from ..errors import CovidnetError
from ..files import atomic_write, write_json
from ..imageio import image_shape, read_image
from ..metrics.bootstrap import format_ci
from ..metrics.segmentation import PARTS, box_mask, per_image_metrics, segmentation_metrics
from ..runtime import LoadedModel as Segmenter
from ..runtime import load
from .figures import dice_histogram, overlay, png_bytes, worst_cases_figure

WORST = 8  # worst cases on the page


@dataclass
class LungsEvalConfig:
    """``covidnet lungs eval``: a segmenter on a built dataset's split (its images with annotated masks)."""

    checkpoint: str = option(
        help="a segmentation checkpoint (best.pt of `covidnet train --task segmentation`), or its `covidnet "
        "export` (.onnx)"
    )
    data: str = option(help="a dataset folder written by `covidnet data build --lung-masks`")
    split: str = option("test", "split of --data", choices=("train", "val", "test"))
    resamples: int = option(1000, "bootstrap resamples of patients (0: no CIs)")
    seed: int = option(0, "seed of the bootstrap")
    json: str | None = option(None, "write the metrics as JSON to OUT", metavar="OUT")
    report: str | None = option(None, "write an HTML page with the worst cases to OUT_DIR", metavar="OUT_DIR")
    device: str = option("auto", "auto, cpu, cuda")
    progress: bool = option(True, "no progress bar", flag="--quiet", negate=True)
    box: tuple[float, float, float, float] | None = None  # (x0, y0, x1, y1), fractions of the side: a baseline


def evaluate_lungs(cfg: LungsEvalConfig) -> dict:
    """The segmentation metrics of ``checkpoint`` on the annotated images of ``data``'s ``split`` (JSON-able;
    also ``report/metrics.json`` and ``report/index.html`` when ``report`` is given, and ``json``). ``box``:
    (x0, y0, x1, y1) as fractions of the side, scored on the same images as a baseline."""
    checkpoint, data, split, resamples, seed, report, box = (
        cfg.checkpoint, cfg.data, cfg.split, cfg.resamples, cfg.seed, cfg.report, cfg.box
    )  # fmt: skip
    lm = load(checkpoint, cfg.device, tasks=("segmentation",))
    store = open_store(data)
    lm.contract.check_store(store, str(data))
    rows = store.mask_rows(split)
    if len(rows) == 0:
        raise CovidnetError(
            f"{data}: no {split} image has an annotated lung mask; build it with --lung-masks NAME=DIR "
            "(masks a model drew, --lungs, are not evaluated)"
        )
    per, box_per = _score(lm, store, rows, box, cfg.progress)
    patients = store.patients(rows)
    m = {
        "task": "lungs",
        "checkpoint": str(checkpoint),
        "arch": lm.arch,
        "data": str(data),
        "split": split,
        "stored_size": store.size,
        "hd95_unit": "pixels of the stored image",
        **segmentation_metrics(per, patients, resamples, seed),
    }
    if box_per is not None:
        m["box_baseline"] = {"box": list(box), **segmentation_metrics(box_per, patients, resamples, seed)}
    names = store.names(rows)
    m["images"] = [
        {"filename": names[k], "patient": patients[k], **{key: float(v[k]) for key, v in per.items()}}
        for k in range(len(rows))
    ]
    if report:
        write_json(Path(report) / "metrics.json", m)
        _write_page(report, m, lm, store, rows, per)
    if cfg.json:
        write_json(cfg.json, m)
    return m


def _score(lm: Segmenter, store, rows: np.ndarray, box, progress: bool):
    """Per-image metrics of the model (and of the fixed ``box``), a batch of rows at a time."""
    parts, box_parts = [], []
    box_pred = box_mask(store.size, box) if box is not None else None
    starts = range(0, len(rows), lm.batch_size)
    if progress:
        import sys

        from tqdm import tqdm

        starts = tqdm(starts, desc="lungs eval", unit="batch", file=sys.stderr, leave=False)
    for k in starts:
        part = rows[k : k + lm.batch_size]
        truth = store.read_masks(part)
        pred = is_lung(lm.logits(store, part))
        parts.append(per_image_metrics(pred, truth == LUNG, truth != IGNORE))
        if box_pred is not None:
            box_parts.append(per_image_metrics(np.broadcast_to(box_pred, pred.shape), truth == LUNG, truth != IGNORE))
    join = lambda ps: {key: np.concatenate([p[key] for p in ps]) for key in ps[0]}  # noqa: E731
    return join(parts), (join(box_parts) if box_parts else None)


def _write_page(out: str | Path, m: dict, lm: Segmenter, store, rows: np.ndarray, per: dict) -> Path:
    """The HTML page: the summary table, the worst cases overlaid, the Dice histogram."""
    from ..report import html_table, write_page

    order = np.argsort(np.nan_to_num(per["lungs.dice"], nan=-1.0), kind="stable")[:WORST]
    worst = rows[order]
    images, truth = store.read(worst), store.read_masks(worst)
    pred = lm.masks(images) == LUNG
    panels = [overlay(images[k], pred[k], truth[k] == LUNG, truth[k] == IGNORE) for k in range(len(worst))]
    captions = [f"{_short(store.names([r])[0])}  Dice {per['lungs.dice'][k]:.3f}" for r, k in zip(worst, order)]
    header = ["", "Dice", "IoU", "HD95 (px)", "images"]
    table_rows = [
        [part, *(format_ci(m[part][key]) for key in ("dice", "iou", "hd95")), str(m["scored"][part])] for part in PARTS
    ]
    if "box_baseline" in m:
        b = m["box_baseline"]
        table_rows.append(["fixed box", *(format_ci(b["lungs"][key]) for key in ("dice", "iou", "hd95")), str(b["n"])])
    summary = (
        f"<p>{m['n']} {m['split']} images of {m['n_patients']} patients with annotated lung masks, at "
        f"{m['stored_size']} px; 95 % intervals from {m['bootstrap']['resamples']} bootstrap resamples of "
        "patients. <em>right</em> is the patient's right lung (the image's left); HD95 in pixels of the "
        "stored image.</p>\n" + html_table(header, table_rows, id="lung-metrics")
    )
    figures = [
        (
            "worst.png",
            worst_cases_figure(panels, captions),
            "The worst cases by Dice: prediction red, annotation outlined green, ignored pixels blue.",
            "worst",
        ),
        ("dice.png", dice_histogram(per["lungs.dice"]), "Dice of both lungs, per image.", "dice"),
    ]
    context = {"checkpoint": m["checkpoint"], "architecture": m["arch"], "data": m["data"], "split": m["split"]}
    return write_page(out, "Lung segmentation", summary, figures, context=context)


def _short(name: str, n: int = 30) -> str:
    """A file name that fits over its panel: an ellipsis in the middle (patients differ at the start, views
    at the end)."""
    return name if len(name) <= n else name[: n // 2 - 1] + "…" + name[len(name) - (n - n // 2) :]


@dataclass
class LungsPredictConfig:
    """``covidnet lungs predict``: lung mask PNGs for raw images."""

    checkpoint: str = option(
        help="a segmentation checkpoint (best.pt of `covidnet train --task segmentation`), or its `covidnet "
        "export` (.onnx)",
        metavar="MODEL",
        positional=True,
    )
    inputs: list[str] = option(help="image files, or folders walked recursively", metavar="IMAGE_OR_DIR",
                               positional=True)  # fmt: skip
    out: str = option(help="folder for the mask PNGs")
    overlay: bool = option(False, "also write the image with its mask over it")
    json: bool = option(False, "one JSON object per image, one per line")
    batch_size: int = option(16, "images a forward pass takes")
    device: str = option("auto", "auto, cpu, cuda")
    progress: bool = option(True, "no progress bar", flag="--quiet", negate=True)


def predict_lungs(cfg: LungsPredictConfig) -> Iterator[dict]:
    """For each image file (or image under a folder) of ``inputs``, in order: its lung mask written to
    ``out/STEM.lungs.png`` (and with ``overlay`` the image with the mask over it, ``STEM.overlay.lungs.png``);
    yields ``{"path", "status": "ok", "mask", "overlay", "lung_fraction"}`` or ``{"path", "status": "failed",
    "error"}``. ``lung_fraction``: the share of the contract's square the model calls lung."""
    from ..predict import CamFiles, read_batches

    inputs, out, overlay_images, batch_size = cfg.inputs, cfg.out, cfg.overlay, cfg.batch_size
    lm = load(cfg.checkpoint, cfg.device, batch_size, tasks=("segmentation",))
    files = CamFiles(out, ".lungs.png")
    for batch in read_batches(inputs, lm.contract, batch_size):
        ready = [img for _, img, error in batch if error is None]
        masks = iter(lm.masks(np.stack(ready)) if ready else [])
        for path, _, error in batch:
            if error is not None:
                yield {"path": str(path), "status": "failed", "error": error}
                continue
            mask = next(masks)
            try:
                yield _write_prediction(lm, files, Path(path), mask, overlay_images)
            except CovidnetError as e:
                yield {"path": str(path), "status": "failed", "error": str(e)}


def _write_prediction(lm: Segmenter, files, path: Path, mask: np.ndarray, with_overlay: bool) -> dict:
    full = lm.contract.uncrop(mask, image_shape(path))
    mask_path = files.path(path.stem, None)
    atomic_write(mask_path, png_bytes(full))
    result = {"path": str(path), "status": "ok", "mask": str(mask_path), "overlay": None}
    if with_overlay:
        overlay_path = files.path(path.stem, "overlay")
        atomic_write(overlay_path, png_bytes(overlay(read_image(path), full == LUNG)))
        result["overlay"] = str(overlay_path)
    result["lung_fraction"] = float((mask == LUNG).mean())
    return result
