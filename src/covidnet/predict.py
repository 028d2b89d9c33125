"""``covidnet predict``: labels, class probabilities and a triage decision for raw images, streamed in
batches (constant memory for any number of files), through the same preprocessing as training."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from .data.sources._common import IMAGE_SUFFIXES
from .errors import ConfigError, CovidnetError
from .evaluate import _device, _memory_format, positive_class, predict_logits, probabilities
from .tensors import image_input


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
    op = meta.get("operating_point")
    if op:
        return {"class": op["class"], "threshold": op["threshold"], "rule": f"operating point {op['target']} (validation)"}
    return None


def predict_paths(checkpoint: str, inputs: Iterable[str], batch_size: int = 16, device: str = "auto",
                  threshold: str | None = None, cam_dir: str | None = None, cam_method: str = "gradcam",
                  operating_point: str | None = None) -> Iterator[dict]:
    """One result per input image, in order: ``{"path", "status": "ok", "label", "probabilities",
    "triage", "cam"}`` or ``{"path", "status": "failed", "error"}``."""
    from .checkpoint import load_model
    from .data.imageio import frontal_problem
    from .data.preprocess import load_image

    dev = _device(device)
    model, meta = load_model(checkpoint, dev)
    classes, pre = meta["classes"], meta["preprocess"]
    rule = triage_rule(meta, threshold, operating_point)
    explainer = None
    if cam_dir:
        from .explain import CamExplainer

        Path(cam_dir).mkdir(parents=True, exist_ok=True)
        explainer = CamExplainer(model, method=cam_method)
    pending: list[tuple[Path, np.ndarray]] = []
    used_names: set[str] = set()

    def flush() -> Iterator[dict]:
        stack = np.stack([img for _, img in pending])
        logits = predict_logits(model, lambda pos: torch.from_numpy(stack[pos]), np.arange(len(stack)), batch_size, pre,
                                dev, _memory_format(meta))
        probs = probabilities(logits, meta.get("temperature"))
        for k, (path, img) in enumerate(pending):
            p = probs[k]
            out = {"path": str(path), "status": "ok", "label": classes[int(p.argmax())],
                   "probabilities": {c: float(v) for c, v in zip(classes, p)}}
            if rule:
                pc = float(p[classes.index(rule["class"])])
                out["triage"] = {**rule, "probability": pc, "flag": pc >= rule["threshold"]}
            if explainer is not None:
                x = image_input(img, pre, dev)
                heat = explainer(x, int(p.argmax()))[0]
                out["cam"] = str(_save_cam(Path(cam_dir), path, img, heat, used_names))
            yield out
        pending.clear()

    try:
        for path, error in iter_inputs(inputs):
            if error:
                yield {"path": str(path), "status": "failed", "error": error}
                continue
            try:
                problem = frontal_problem(path)
                if problem:
                    raise CovidnetError(f"{path}: {problem}")
                pending.append((path, load_image(path, pre["stored_size"], pre.get("top_crop", 0.08))))
            except CovidnetError as e:
                yield {"path": str(path), "status": "failed", "error": str(e)}
                continue
            if len(pending) >= batch_size:
                yield from flush()
        if pending:
            yield from flush()
    finally:
        if explainer is not None and hasattr(explainer, "close"):
            explainer.close()


def _save_cam(folder: Path, path: Path, img: np.ndarray, heat: np.ndarray, used: set[str]) -> Path:
    from .explain import save_overlay

    name, n = f"{path.stem}.cam.png", 1
    while name in used:
        n += 1
        name = f"{path.stem}-{n}.cam.png"
    used.add(name)
    save_overlay(folder / name, img, heat)
    return folder / name


__all__ = ["iter_inputs", "positive_class", "predict_paths", "triage_rule"]
