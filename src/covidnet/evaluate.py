"""Evaluation: predictions for a built dataset's split or for raw images named in a COVIDx label file,
and metrics with honest uncertainty.

Metrics come from scikit-learn; what is written here is the bootstrap over **patients** (images of
one patient are not independent, so resampling images would understate the uncertainty), the
expected calibration error, temperature scaling, and the per-source breakdown. Training's validation
and ``covidnet eval`` call the same ``predict_logits`` and ``classification_metrics``, so they agree
exactly on the same data and checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .errors import ConfigError, CovidnetError
from .tensors import image_input, model_input, uint8_to_unit

METRICS = ("sensitivity", "ppv", "specificity", "f1", "auc")


# --- inference --------------------------------------------------------------------------------------


@torch.no_grad()
def predict_logits(model: torch.nn.Module, get_batch: Callable[[np.ndarray], torch.Tensor], positions: np.ndarray,
                   batch_size: int, pre: dict, device: torch.device, memory_format=torch.contiguous_format) -> torch.Tensor:
    """Logits (N, K) in float32 on the CPU for ``positions``; ``get_batch(pos)`` gives their stored
    uint8 pixels (B, H, W). bf16 autocast on GPU, as in training."""
    was_training = model.training
    model.eval()
    amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    out = []
    for k in range(0, len(positions), batch_size):
        x = uint8_to_unit(get_batch(positions[k:k + batch_size]).to(device, non_blocking=True))
        with amp:
            out.append(model(model_input(x, pre, memory_format)).float().cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, 0)


# --- metrics ----------------------------------------------------------------------------------------


def classification_metrics(y: np.ndarray, logits: torch.Tensor, classes: Sequence[str]) -> dict:
    """Point metrics as training logs them: loss, accuracy, per-class sensitivity (recall) and PPV
    (precision), the confusion matrix (rows: truth)."""
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_score, recall_score

    labels = list(range(len(classes)))
    pred = logits.argmax(1).numpy()
    sens = recall_score(y, pred, labels=labels, average=None, zero_division=np.nan)
    ppv = precision_score(y, pred, labels=labels, average=None, zero_division=np.nan)
    return {
        "n": int(len(y)),
        "loss": float(F.cross_entropy(logits, torch.as_tensor(y))) if len(y) else float("nan"),
        "accuracy": float(accuracy_score(y, pred)) if len(y) else float("nan"),
        "sensitivity": {c: float(v) for c, v in zip(classes, sens)},
        "ppv": {c: float(v) for c, v in zip(classes, ppv)},
        "confusion": {"labels": list(classes), "matrix": confusion_matrix(y, pred, labels=labels).tolist()},
    }


def point_metrics(y: np.ndarray, probs: np.ndarray, classes: Sequence[str]) -> dict:
    """Accuracy; per class sensitivity, PPV, specificity, F1 and one-vs-rest ROC-AUC; macro averages
    (over the classes where a value exists). NaN where a metric is undefined (e.g. no positives)."""
    from sklearn.metrics import confusion_matrix, f1_score, precision_score, recall_score, roc_auc_score

    k = len(classes)
    labels = list(range(k))
    pred = probs.argmax(1)
    cm = confusion_matrix(y, pred, labels=labels)
    sens = recall_score(y, pred, labels=labels, average=None, zero_division=np.nan)
    ppv = precision_score(y, pred, labels=labels, average=None, zero_division=np.nan)
    f1 = f1_score(y, pred, labels=labels, average=None, zero_division=np.nan)
    tn = cm.sum() - cm.sum(0) - cm.sum(1) + np.diag(cm)
    with np.errstate(invalid="ignore", divide="ignore"):
        spec = tn / (tn + cm.sum(0) - np.diag(cm))
    auc = np.full(k, np.nan)
    for c in labels:
        positives = y == c
        if 0 < positives.sum() < len(y):
            auc[c] = roc_auc_score(positives, probs[:, c])
    per_class = {name: {"sensitivity": sens[c], "ppv": ppv[c], "specificity": spec[c], "f1": f1[c], "auc": auc[c]}
                 for c, name in enumerate(classes)}
    with np.errstate(invalid="ignore"):
        macro = {m: float(np.nanmean([per_class[c][m] for c in classes])) if any(
            not np.isnan(per_class[c][m]) for c in classes) else float("nan") for m in METRICS}
    return {"accuracy": float((pred == y).mean()) if len(y) else float("nan"), "macro": macro,
            "per_class": {c: {m: float(v) for m, v in d.items()} for c, d in per_class.items()},
            "confusion_matrix": {"labels": list(classes), "matrix": cm.tolist()}}


def expected_calibration_error(y: np.ndarray, probs: np.ndarray, bins: int = 10) -> float:
    """ECE of the top-class confidence over ``bins`` equal-width bins (Guo et al. 2017)."""
    if len(y) == 0:
        return float("nan")
    conf, pred = probs.max(1), probs.argmax(1)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        m = which == b
        if m.any():
            ece += m.mean() * abs((pred[m] == y[m]).mean() - conf[m].mean())
    return float(ece)


def fit_temperature(logits: torch.Tensor, y: np.ndarray) -> float:
    """The temperature T minimising the negative log-likelihood of softmax(logits / T) (Guo et al.
    2017), fitted by LBFGS on log T; validation data, never test data."""
    if len(y) == 0:
        raise ConfigError("cannot fit a temperature on an empty validation split")
    log_t = torch.zeros(1, requires_grad=True)
    target = torch.as_tensor(y)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), target)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp())


def compute_metrics(y: np.ndarray, probs: np.ndarray, classes: Sequence[str], patients: Sequence[str] | None = None,
                    sources: Sequence[str] | None = None, resamples: int = 1000, seed: int = 0) -> dict:
    """The evaluation JSON: every metric with a 95 % CI from a bootstrap over patients; ECE; per source."""
    y = np.asarray(y)
    patients = np.asarray(patients if patients is not None else [str(i) for i in range(len(y))])
    out = _with_ci(y, probs, classes, patients, resamples, seed)
    if sources is not None and len(set(sources)) > 1:
        sources = np.asarray(sources)
        out["per_source"] = {s: _with_ci(y[sources == s], probs[sources == s], classes, patients[sources == s], resamples, seed)
                             for s in sorted(set(sources))}
    else:
        out["per_source"] = {}
    return out


def patient_bootstrap(flat_metrics: Callable[[np.ndarray], dict[str, float]], patients, resamples: int,
                      seed: int) -> dict[str, dict]:
    """``{key: {"value", "ci95"}}`` for every number ``flat_metrics(idx)`` returns: the value on all
    rows, and the 2.5th and 97.5th percentiles over ``resamples`` bootstrap samples of **patients**
    (each drawn patient brings all of its rows); NaN resamples are ignored, no CI when none is left."""
    patients = np.asarray(patients)
    flat = flat_metrics(np.arange(len(patients)))
    boots = []
    if resamples > 0 and len(patients):
        rng = np.random.default_rng(seed)
        uniq, inverse = np.unique(patients, return_inverse=True)
        members = [np.flatnonzero(inverse == p) for p in range(len(uniq))]
        for _ in range(resamples):
            pick = rng.integers(0, len(uniq), len(uniq))
            boots.append(flat_metrics(np.concatenate([members[p] for p in pick])))
    out = {}
    for key, value in flat.items():
        vals = np.array([b[key] for b in boots], dtype=float) if boots else np.array([])
        vals = vals[~np.isnan(vals)]
        out[key] = {"value": value, "ci95": [float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))]
                    if len(vals) else None}
    return out


def _with_ci(y, probs, classes, patients, resamples: int, seed: int) -> dict:
    point = point_metrics(y, probs, classes)
    cis = patient_bootstrap(lambda idx: _flatten(point_metrics(y[idx], probs[idx], classes), classes), patients,
                            resamples, seed)

    def entry(key):
        return cis[key]

    return {
        "n": int(len(y)), "n_patients": int(len(np.unique(patients))),
        "accuracy": entry("accuracy"),
        "macro": {m: entry(f"macro.{m}") for m in METRICS},
        "per_class": {c: {m: entry(f"{c}.{m}") for m in METRICS} for c in classes},
        "confusion_matrix": point["confusion_matrix"],
        "ece": expected_calibration_error(y, probs),
        "bootstrap": {"resamples": resamples, "unit": "patient", "seed": seed},
    }


def _flatten(point: dict, classes) -> dict[str, float]:
    flat = {"accuracy": point["accuracy"], **{f"macro.{m}": v for m, v in point["macro"].items()}}
    for c in classes:
        flat.update({f"{c}.{m}": v for m, v in point["per_class"][c].items()})
    return flat


# --- label files of raw images --------------------------------------------------------------------------


@dataclass
class LabelRow:
    patient_id: str
    filename: str
    label: str
    source: str
    line: int


def read_label_file(path: Path | str, classes: Sequence[str]) -> list[LabelRow]:
    """A COVIDx label file: ``patientid filename label [source]`` per line, space-separated. Every
    structural problem stops with the file and line named."""
    path = Path(path)
    if not path.is_file():
        raise CovidnetError(f"{path}: label file not found")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) not in (3, 4):
            raise CovidnetError(f"{path}:{n}: expected 'patientid filename label [source]' (3 or 4 columns), got "
                                f"{len(parts)}: {line.strip()!r} (a patient id or file name containing spaces?)")
        if parts[2] not in classes:
            raise CovidnetError(f"{path}:{n}: unknown label {parts[2]!r}; this checkpoint's classes are {', '.join(classes)}")
        rows.append(LabelRow(parts[0], parts[1], parts[2], parts[3] if len(parts) == 4 else "", n))
    if not rows:
        raise CovidnetError(f"{path}: the label file is empty")
    return rows


def find_image(images: Path, filename: str) -> Path | None:
    """``images/filename``, or the same stem with another image extension (COVIDx lists name PNGs)."""
    p = images / filename
    if p.is_file():
        return p
    for ext in (".png", ".jpg", ".jpeg", ".webp", ".dcm", ".dicom"):
        q = images / (Path(filename).stem + ext)
        if q.is_file():
            return q
    return None


def nan_to_none(obj):
    """JSON has no NaN: undefined metrics become null."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [nan_to_none(v) for v in obj]
    return obj


# --- evaluating a checkpoint ----------------------------------------------------------------------------


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: no CUDA device is available")
    return torch.device(name)


def _memory_format(meta: dict):
    return torch.channels_last if meta.get("memory_format") == "channels_last" else torch.contiguous_format


@dataclass
class Predictions:
    """What an evaluation predicted, aligned row by row, plus what could not be read."""

    names: list[str]
    y: np.ndarray
    logits: torch.Tensor
    patients: list[str]
    sources: list[str]
    load: Callable[[int], np.ndarray]  # row -> stored uint8 image (for the report's error grid)
    failed: list[dict]


def predict_store(model, meta: dict, data: str, split: str, device: torch.device, batch_size: int | None = None) -> Predictions:
    from .data.store import open_store

    store = open_store(data)
    rows = store.rows(split)
    if len(rows) == 0:
        raise ConfigError(f"{data}: no images in split {split!r}")
    pre = meta["preprocess"]
    if store.size != pre["stored_size"]:
        raise ConfigError(f"{data}: stored at {store.size} px, but the checkpoint was trained on a store of {pre['stored_size']} px")
    classes = meta["classes"]
    bs = batch_size or meta["train_config"].get("eval_batch_size", 64)
    logits = predict_logits(model, lambda pos: torch.from_numpy(np.ascontiguousarray(store.images[rows[pos]])),
                            np.arange(len(rows)), bs, pre, device, _memory_format(meta))
    idx = [store.index[r] for r in rows]
    return Predictions(
        names=[r["filename"] for r in idx], y=store.labels(rows, binary=len(classes) == 2), logits=logits,
        patients=[f"{r['source']}:{r['patient_id']}" for r in idx], sources=[r["source"] for r in idx],
        load=lambda i: np.asarray(store.images[rows[i]]), failed=[],
    )


def predict_label_file(model, meta: dict, labels: str, images: str, device: torch.device, batch_size: int = 32,
                       progress: bool = False) -> Predictions:
    """Raw images named in a COVIDx label file, through the same preprocessing as training
    (``load_image`` at the checkpoint's stored size, then ``model_input``). An image that is missing,
    unreadable or a lateral view is reported as failed; the rest are evaluated."""
    from .predict import load_input

    classes = meta["classes"]
    rows = read_label_file(labels, classes)
    images = Path(images)
    if not images.is_dir():
        raise CovidnetError(f"{images}: image folder not found")
    pre = meta["preprocess"]
    ok_rows, pixels, failed = [], [], []
    for row in _progress(rows, progress, "images"):
        path = find_image(images, row.filename)
        if path is None:
            failed.append({"item": f"{labels}:{row.line}", "name": row.filename, "error": f"{images / row.filename} not found"})
            continue
        try:
            pixels.append(load_input(path, pre))  # predict's: the frontal-view check, then the one preprocessing path
        except CovidnetError as e:
            failed.append({"item": f"{labels}:{row.line}", "name": row.filename, "error": str(e)})
            continue
        ok_rows.append(row)
    if not ok_rows:
        raise CovidnetError(f"{labels}: none of its {len(rows)} images could be read (first: {failed[0]['error']})")
    stack = np.stack(pixels)
    logits = predict_logits(model, lambda pos: torch.from_numpy(stack[pos]), np.arange(len(stack)), batch_size, pre,
                            device, _memory_format(meta))
    return Predictions(
        names=[r.filename for r in ok_rows], y=np.array([classes.index(r.label) for r in ok_rows]), logits=logits,
        patients=[f"{r.source}:{r.patient_id}" for r in ok_rows], sources=[r.source or "(none)" for r in ok_rows],
        load=lambda i: stack[i], failed=failed,
    )


def _progress(items, enabled: bool, desc: str):
    if not enabled:
        return items
    import sys

    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="img", file=sys.stderr, leave=False)


def probabilities(logits: torch.Tensor, temperature: float | None) -> np.ndarray:
    from .predict import softmax  # the one logits -> probabilities rule, shared with predict and serve

    return softmax(logits.numpy(), temperature)


def evaluate_checkpoint(checkpoint: str, data: str | None = None, split: str = "test", labels: str | None = None,
                        images: str | None = None, resamples: int = 1000, seed: int = 0, device: str = "auto",
                        report: str | None = None, cam_method: str = "gradcam", errors_shown: int = 12,
                        progress: bool = False) -> dict:
    """Evaluate ``checkpoint`` on a built dataset's ``split`` (``data``) or on the raw ``images`` named in a
    COVIDx ``labels`` file; write an HTML report to ``report`` when given. Returns the metrics JSON."""
    from . import __version__
    from .checkpoint import load_model

    if (data is None) == (labels is None):
        raise ConfigError("give either --data DIR [--split NAME] or --labels FILE --images DIR")
    if labels is not None and images is None:
        raise ConfigError("--labels needs --images DIR, the folder of the raw images it names")
    dev = _device(device)
    model, meta = load_model(checkpoint, dev)
    if data is not None:
        pred = predict_store(model, meta, data, split, dev)
    else:
        pred = predict_label_file(model, meta, labels, images, dev, progress=progress)
    classes = meta["classes"]
    temperature = meta.get("temperature")
    probs = probabilities(pred.logits, temperature)
    metrics = compute_metrics(pred.y, probs, classes, pred.patients, pred.sources, resamples, seed)
    metrics.update({
        "temperature": temperature, "classes": list(classes), "checkpoint": str(checkpoint), "arch": meta["arch"],
        "data": str(data) if data else None, "split": split if data else None,
        "labels": str(labels) if labels else None, "images": str(images) if images else None,
        "processed": len(pred.y), "failed_count": len(pred.failed), "failed": pred.failed, "version": __version__,
    })
    if report:
        _write_report(report, metrics, pred, probs, classes, model, meta, dev, cam_method, errors_shown)
    return metrics


def _write_report(out_dir, metrics, pred: Predictions, probs, classes, model, meta, dev, cam_method, k) -> None:
    from .explain import CamExplainer, overlay
    from .report import write_report

    pred_cls = probs.argmax(1)
    wrong = np.flatnonzero(pred_cls != pred.y)
    worst = wrong[np.argsort(-probs[wrong, pred_cls[wrong]])][:k]
    errors = []
    if len(worst):
        pre = meta["preprocess"]
        explainer = CamExplainer(model, method=cam_method)
        for i in worst:
            img = pred.load(int(i))
            x = image_input(img, pre, dev)
            heat = explainer(x, int(pred_cls[i]))[0]
            errors.append({"name": pred.names[i], "true": classes[pred.y[i]], "pred": classes[pred_cls[i]],
                           "confidence": float(probs[i, pred_cls[i]]), "image": img, "overlay": overlay(img, heat)})
        if hasattr(explainer, "close"):
            explainer.close()
    context = {k: str(metrics[k]) for k in ("checkpoint", "arch", "data", "split", "labels", "images", "version") if metrics.get(k)}
    context["images evaluated"] = f"{metrics['processed']} ({metrics['failed_count']} failed)"
    write_report(out_dir, metrics, pred.y, probs, classes, errors=errors, context=context)


# --- calibration: temperature and operating point ----------------------------------------------------


def calibrate_checkpoint(checkpoint: str, data: str, temperature: bool = True, operating_point: str | None = None,
                         device: str = "auto") -> dict:
    """Fit a temperature and/or choose an operating point on the **validation** split of ``data`` and
    store them in ``checkpoint`` (rewritten atomically). ``operating_point``: 'sensitivity=0.95' or
    'specificity=0.9' for the positive class (COVID-19, or 'positive' for binary checkpoints)."""
    from .checkpoint import load_model, read_checkpoint, save_checkpoint

    dev = _device(device)
    model, meta = load_model(checkpoint, dev)
    pred = predict_store(model, meta, data, "val", dev)
    classes = meta["classes"]
    out: dict = {}
    t = fit_temperature(pred.logits, pred.y) if temperature else meta.get("temperature")
    if temperature:
        out["temperature"] = t
        out["ece_before"] = expected_calibration_error(pred.y, probabilities(pred.logits, None))
        out["ece_after"] = expected_calibration_error(pred.y, probabilities(pred.logits, t))
    if operating_point:
        out["operating_point"] = choose_operating_point(pred.y, probabilities(pred.logits, t), classes, operating_point)
    ckpt = read_checkpoint(checkpoint)
    ckpt.update({k: v for k, v in out.items() if k in ("temperature", "operating_point")})
    ckpt["calibration_data"] = str(data)
    save_checkpoint(Path(checkpoint), {k: v for k, v in ckpt.items() if k not in ("format", "version")})
    return out


def positive_class(classes: Sequence[str]) -> str:
    return "COVID-19" if "COVID-19" in classes else "positive"


def choose_operating_point(y: np.ndarray, probs: np.ndarray, classes: Sequence[str], spec: str) -> dict:
    """The threshold on P(positive class) that meets ``spec`` ('sensitivity=0.95' or 'specificity=0.9')
    on these (validation) data: the highest threshold reaching the sensitivity, or the lowest reaching
    the specificity."""
    try:
        kind, value = spec.split("=")
        target = float(value)
    except ValueError:
        kind, target = "", -1.0
    if kind not in ("sensitivity", "specificity") or not 0 < target <= 1:
        raise ConfigError(f"--operating-point {spec!r}: write sensitivity=0.95 or specificity=0.9")
    c = classes.index(positive_class(classes))
    p, pos = probs[:, c], y == c
    if not pos.any() or pos.all():
        raise ConfigError("the validation split needs positive and negative images to choose an operating point")
    candidates = np.unique(np.concatenate([p, [0.0]]))
    best = None
    for t in (candidates[::-1] if kind == "sensitivity" else candidates):
        sens = float((p[pos] >= t).mean())
        spec_ = float((p[~pos] < t).mean())
        if (kind == "sensitivity" and sens >= target) or (kind == "specificity" and spec_ >= target):
            best = {"class": classes[c], "threshold": float(t), "target": spec, "sensitivity": sens, "specificity": spec_,
                    "n_val": int(len(y))}
            break
    return best
