"""Evaluation: one pipeline for every task. A checkpoint's outputs for a built dataset's split (or, for
classification, for the raw images a COVIDx label file names), its task's metrics with honest
uncertainty (``covidnet.metrics``: the bootstrap over **patients**), and an HTML report; and
calibration (temperature, operating point) on the validation split.

Training's validation and ``covidnet eval`` run the same ``runtime.device.predict_outputs`` and the same
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
from .config import option
from .data.labelfile import find_image, read_label_file
from .data.store import open_store
from .errors import ConfigError, CovidnetError, UsageError
from .files import write_json
from .metrics.calibration import choose_operating_point, expected_calibration_error, fit_temperature
from .runtime import LoadedModel, load
from .tasks import softmax

IMAGE_TASKS = ("classification", "severity", "risk")  # eval's; a segmenter is evaluated by `covidnet lungs eval`


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
    sites: list[str] | None = None  # where each film was taken ('' unknown)
    views: list[str] | None = None  # 'PA', 'AP', 'AP supine', '' unknown (records.view_position)


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
        sites=store.sites(rows),
        views=store.views(rows),
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
        sites=[r.site for r in ok_rows],
        views=[r.view for r in ok_rows],
    )


def _progress(items, enabled: bool, desc: str):
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="img", file=sys.stderr, leave=False)


@dataclass
class EvalConfig:
    """``covidnet eval``: a checkpoint on a built dataset's split or on the raw images of a label file."""

    checkpoint: str = option(help="a checkpoint written by `covidnet train` (best.pt)")
    data: str | None = option(None, "a dataset folder written by `covidnet data build`")
    split: str = option("test", "split of --data", choices=("train", "val", "test"))
    labels: str | None = option(None, "a COVIDx label file: patientid filename label [source [site [view]]]")
    images: str | None = option(None, "the folder of the raw images --labels names (PNG, JPEG, WebP, DICOM)")
    resamples: int = option(1000, "bootstrap resamples of patients (0: no CIs)")
    seed: int = option(0, "seed of the bootstrap")
    json: str | None = option(None, "write the metrics as JSON to OUT", metavar="OUT")
    report: str | None = option(None, "write an HTML report with figures to OUT_DIR", metavar="OUT_DIR")
    cam_method: str = option("gradcam", "heat maps in the report: gradcam or gradcam++")
    device: str = option("auto", "auto, cpu, cuda")
    progress: bool = option(True, "no progress bar", flag="--quiet", negate=True)
    errors_shown: int = 12  # images with their heat map in the report


def evaluate_checkpoint(cfg: EvalConfig) -> dict:
    """Evaluate ``cfg.checkpoint`` (classification, severity or risk) on a built dataset's ``split``
    (``data``) or, for classification, on the raw ``images`` named in a COVIDx ``labels`` file; write an HTML
    report to ``report`` and the metrics to ``json`` when given. Returns the metrics JSON."""
    checkpoint, data, split, labels, images = cfg.checkpoint, cfg.data, cfg.split, cfg.labels, cfg.images
    if (data is None) == (labels is None):
        raise ConfigError("give either --data DIR [--split NAME] or --labels FILE --images DIR")
    if labels is not None and images is None:
        raise ConfigError("--labels needs --images DIR, the folder of the raw images it names")
    lm = load(checkpoint, cfg.device, backend="torch")
    if lm.task.name not in IMAGE_TASKS:
        raise ConfigError(f"{checkpoint}: a {lm.task.name} checkpoint; evaluate it with `covidnet lungs eval`")
    if data is not None:
        pred = predict_store(lm, data, split)
    else:
        pred = predict_label_file(lm, labels, images, cfg.progress)
    metrics = lm.task.evaluate(
        pred.y, pred.out, pred.patients, pred.sources, lm.meta, cfg.resamples, cfg.seed, pred.sites, pred.views
    )
    for entry, name, patient in zip(metrics.get("predictions", ()), pred.names, pred.patients):
        entry.update(name=name, patient=patient)
    metrics.update(
        {
            "task": lm.task.name,
            "task_meta": lm.task.meta(),
            "checkpoint": str(checkpoint),
            "arch": lm.arch,
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
    if cfg.report:
        _write_report(cfg.report, lm, metrics, pred, cfg.cam_method, cfg.errors_shown)
    if cfg.json:
        write_json(cfg.json, metrics)
    return metrics


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


@dataclass
class CalibrateConfig:
    """``covidnet calibrate``: a temperature and/or an operating point, fitted on the validation split."""

    checkpoint: str = option(help="a classification checkpoint (best.pt); rewritten with what is fitted")
    data: str = option(help="the dataset folder; its val split is used, never test")
    temperature: bool = option(False, "fit temperature scaling")
    operating_point: str | None = option(None, "choose the COVID-19 threshold meeting this", metavar="sensitivity=0.95")
    device: str = option("auto", "auto, cpu, cuda")


def calibrate_checkpoint(cfg: CalibrateConfig) -> dict:
    """Fit a temperature and/or choose an operating point on the **validation** split of ``data`` and
    store them in ``checkpoint`` (rewritten atomically). ``operating_point``: 'sensitivity=0.95' or
    'specificity=0.9' for the positive class (COVID-19, or 'positive' for binary checkpoints)."""
    checkpoint, data, temperature, operating_point = cfg.checkpoint, cfg.data, cfg.temperature, cfg.operating_point
    if not temperature and not operating_point:
        raise UsageError("give --temperature and/or --operating-point sensitivity=0.95")
    lm = load(checkpoint, cfg.device, backend="torch", tasks=("classification",))
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
