"""Evaluation: one pipeline for every task. A checkpoint's outputs for a built dataset's split (or, for
classification, for the raw images a COVIDx label file names), its task's metrics with honest
uncertainty (``covidnet.metrics``: the bootstrap over **patients**), and an HTML report; and
calibration (temperature, operating point) on the validation split.

Training's validation and ``covidnet eval`` run the same ``runtime.predict_logits`` and the same
metrics, so they agree exactly on the same data and checkpoint.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import __version__
from .checkpoint import read_checkpoint, save_checkpoint
from .data.labelfile import find_image, read_label_file
from .data.store import open_store
from .errors import ConfigError, CovidnetError, UsageError
from .metrics.calibration import choose_operating_point, expected_calibration_error, fit_temperature
from .runtime import LoadedModel
from .tasks import softmax


@dataclass
class Predictions:
    """What an evaluation predicted, aligned row by row, plus what could not be read."""

    names: list[str]
    y: np.ndarray
    out: np.ndarray  # the network's outputs (N, K), float32
    patients: list[str]
    sources: list[str]
    load: Callable[[int], np.ndarray]  # row -> stored uint8 image (for the report's heat maps)
    failed: list[dict]


def predict_store(lm: LoadedModel, data: str, split: str) -> Predictions:
    """The outputs of ``lm`` on the rows of ``split`` of the built dataset ``data`` that its task can
    use; the store is read in batches, never whole."""
    store = open_store(data)
    lm.check_store(store, str(data))
    rows = lm.task.rows(store, split)
    if len(rows) == 0:
        raise ConfigError(f"{data}: no {lm.task.needs} in split {split!r}")
    return Predictions(
        names=store.names(rows),
        y=lm.task.targets(store, rows),
        out=lm.logits(store, rows),
        patients=store.patients(rows),
        sources=store.sources(rows),
        load=lambda i: np.asarray(store.images[rows[i]]),
        failed=[],
    )


def predict_label_file(lm: LoadedModel, labels: str, images: str, progress: bool = False) -> Predictions:
    """Raw images named in a COVIDx label file, through the checkpoint's contract (the frontal-view
    check, then ``Contract.load``). An image that is missing, unreadable or a lateral view is reported as
    failed; the rest are evaluated."""
    from .data.records import patient_uid
    from .predict import load_input

    if not lm.task.reads_label_files:
        raise UsageError(
            f"--labels evaluates classification checkpoints; this one is a {lm.task.name} checkpoint: give --data DIR "
            "(a built dataset with the task's targets), not --labels"
        )
    classes = lm.classes
    rows = read_label_file(labels, classes)
    folder = Path(images)
    if not folder.is_dir():
        raise CovidnetError(f"{folder}: image folder not found")
    ok_rows, pixels, failed = [], [], []
    for row in _progress(rows, progress, "images"):
        path = find_image(folder, row.filename)
        try:
            if path is None:
                raise CovidnetError(f"{folder / row.filename} not found")
            pixels.append(load_input(path, lm.contract))
        except CovidnetError as e:
            failed.append({"item": f"{labels}:{row.line}", "name": row.filename, "error": str(e)})
            continue
        ok_rows.append(row)
    if not ok_rows:
        raise CovidnetError(f"{labels}: none of its {len(rows)} images could be read (first: {failed[0]['error']})")
    stack = np.stack(pixels)
    return Predictions(
        names=[r.filename for r in ok_rows],
        y=np.array([classes.index(r.label) for r in ok_rows]),
        out=lm.logits(stack),
        patients=[patient_uid(r.source, r.patient_id) for r in ok_rows],
        sources=[r.source or "(none)" for r in ok_rows],
        load=lambda i: stack[i],
        failed=failed,
    )


def _progress(items, enabled: bool, desc: str):
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="img", file=sys.stderr, leave=False)


def evaluate_checkpoint(
    checkpoint: str,
    data: str | None = None,
    split: str = "test",
    labels: str | None = None,
    images: str | None = None,
    resamples: int = 1000,
    seed: int = 0,
    device: str = "auto",
    report: str | None = None,
    cam_method: str = "gradcam",
    errors_shown: int = 12,
    progress: bool = False,
) -> dict:
    """Evaluate ``checkpoint`` (any task) on a built dataset's ``split`` (``data``) or, for
    classification, on the raw ``images`` named in a COVIDx ``labels`` file; write an HTML report to
    ``report`` when given. Returns the metrics JSON."""
    if (data is None) == (labels is None):
        raise ConfigError("give either --data DIR [--split NAME] or --labels FILE --images DIR")
    if labels is not None and images is None:
        raise ConfigError("--labels needs --images DIR, the folder of the raw images it names")
    lm = LoadedModel.open(checkpoint, device)
    pred = predict_store(lm, data, split) if data is not None else predict_label_file(lm, labels, images, progress)
    metrics = lm.task.evaluate(pred.y, pred.out, pred.patients, pred.sources, lm.meta, resamples, seed)
    for entry, name, patient in zip(metrics.get("predictions", ()), pred.names, pred.patients):
        entry.update(name=name, patient=patient)
    metrics.update(
        {
            "task": lm.task.name,
            "task_meta": lm.task.meta(),
            "checkpoint": str(checkpoint),
            "arch": lm.meta["arch"],
            "data": str(data) if data else None,
            "split": split if data else None,
            "labels": str(labels) if labels else None,
            "images": str(images) if images else None,
            "processed": len(pred.y),
            "failed_count": len(pred.failed),
            "failed": pred.failed,
            "version": __version__,
        }
    )
    if report:
        _write_report(report, lm, metrics, pred, cam_method, errors_shown)
    return metrics


def evaluate_task_checkpoint(
    checkpoint: str,
    data: str,
    split: str = "test",
    resamples: int = 1000,
    seed: int = 0,
    device: str = "auto",
    report: str | None = None,
    cam_method: str = "gradcam",
) -> dict:
    """``evaluate_checkpoint`` for a built dataset (the name the severity and risk heads had)."""
    return evaluate_checkpoint(
        checkpoint,
        data=data,
        split=split,
        resamples=resamples,
        seed=seed,
        device=device,
        report=report,
        cam_method=cam_method,
        errors_shown=8,
    )


def _write_report(out_dir, lm: LoadedModel, metrics: dict, pred: Predictions, cam_method: str, k: int) -> None:
    from .explain import overlay

    shown = []
    for d in lm.task.disagreements(pred.y, pred.out, lm.meta, k):
        img = pred.load(d["index"])
        heat = lm.cam(img, d["output"], cam_method)
        shown.append({**d, "name": pred.names[d["index"]], "image": img, "overlay": overlay(img, heat)})
    keys = ("task", "checkpoint", "arch", "data", "split", "labels", "images", "version")
    context = {key: str(metrics[key]) for key in keys if metrics.get(key)}
    context["images evaluated"] = f"{metrics['processed']} ({metrics['failed_count']} failed)"
    lm.task.write_report(out_dir, metrics, pred.y, pred.out, lm.meta, shown, context)


# --- calibration: temperature and operating point ----------------------------------------------------


def calibrate_checkpoint(
    checkpoint: str, data: str, temperature: bool = True, operating_point: str | None = None, device: str = "auto"
) -> dict:
    """Fit a temperature and/or choose an operating point on the **validation** split of ``data`` and
    store them in ``checkpoint`` (rewritten atomically). ``operating_point``: 'sensitivity=0.95' or
    'specificity=0.9' for the positive class (COVID-19, or 'positive' for binary checkpoints)."""
    lm = LoadedModel.open(checkpoint, device, tasks=("classification",))
    pred = predict_store(lm, data, "val")
    out: dict = {}
    logits = torch.from_numpy(pred.out)
    t = fit_temperature(logits, pred.y) if temperature else lm.meta.get("temperature")
    if temperature:
        out["temperature"] = t
        out["ece_before"] = expected_calibration_error(pred.y, softmax(pred.out))
        out["ece_after"] = expected_calibration_error(pred.y, softmax(pred.out, t))
    if operating_point:
        out["operating_point"] = choose_operating_point(pred.y, softmax(pred.out, t), lm.classes, operating_point)
    ckpt = read_checkpoint(checkpoint)
    ckpt.update({k: v for k, v in out.items() if k in ("temperature", "operating_point")})
    ckpt["calibration_data"] = str(data)
    save_checkpoint(Path(checkpoint), {k: v for k, v in ckpt.items() if k not in ("format", "version")})
    return out
