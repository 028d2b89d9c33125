"""Evaluation of a checkpoint on a split of a built dataset: accuracy, per-class sensitivity and PPV,
the confusion matrix. (Confidence intervals, calibration, ROC and reports build on this.)"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .checkpoint import load_model
from .data.store import open_store
from .errors import ConfigError
from .tensors import model_input, uint8_to_unit


def classification_metrics(y: np.ndarray, logits: torch.Tensor, classes) -> dict:
    """Loss, accuracy, per-class sensitivity (recall) and PPV (precision), confusion matrix (rows: truth)."""
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


@torch.no_grad()
def evaluate_checkpoint(checkpoint: str, data: str, split: str = "test", batch_size: int = 64,
                        device: str = "auto") -> dict:
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device))
    model, meta = load_model(checkpoint, dev)
    store = open_store(data)
    rows = store.rows(split)
    if len(rows) == 0:
        raise ConfigError(f"{data}: no images in split {split!r}")
    pre = meta["preprocess"]
    if store.size != pre["stored_size"]:
        raise ConfigError(f"{data}: stored at {store.size} px, but {checkpoint} was trained on a store of {pre['stored_size']} px")
    classes = meta["classes"]
    y = store.labels(rows, binary=len(classes) == 2)
    amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev.type == "cuda")
    out = []
    for k in range(0, len(rows), batch_size):
        x = uint8_to_unit(torch.from_numpy(np.ascontiguousarray(store.images[rows[k:k + batch_size]])).to(dev))
        with amp:
            out.append(model(model_input(x, pre["size"], pre["in_channels"], pre["mean"], pre["std"])).float().cpu())
    return {"checkpoint": str(checkpoint), "data": str(data), "split": split, **classification_metrics(y, torch.cat(out), classes)}
