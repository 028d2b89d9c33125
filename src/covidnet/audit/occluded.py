"""Test 4, occlusion: the model evaluated with the lung fields hidden (filled with the mean of the rest of the
image) and with only the image border kept; a model that still beats chance without the lungs is using
something else."""

from __future__ import annotations

import numpy as np

from ..runtime import LoadedModel
from ..tasks import softmax
from .batches import CHUNK, chunks
from .lung_fields import LUNG_BOX, LungFields, box_region
from .verdicts import OCCLUSION_FAIL, OCCLUSION_WARN, threshold_verdict

BORDER = 0.12  # "border only" keeps this fraction of the side on every edge


def occlude(images: np.ndarray, mode: str, lungs: np.ndarray | None = None) -> np.ndarray:
    """Hide the lung fields ("lungs": the (B, S, S) bool regions ``lungs``, else the fixed box) or
    everything but the border ("border"). The hidden region is filled with the mean of what is kept, per
    image: black would be an input no radiograph looks like, and it would also erase a shortcut the model
    reads from overall exposure."""
    out = np.array(images, copy=True)
    if mode == "none":
        return out
    n = out.shape[-1]
    if mode == "lungs":
        hide = lungs if lungs is not None else np.broadcast_to(box_region(n), out.shape)
    else:
        b = round(BORDER * n)
        middle = np.zeros((n, n), bool)
        middle[b : n - b, b : n - b] = True
        hide = np.broadcast_to(middle, out.shape)
    keep = ~hide
    fill = (out * keep).sum((1, 2)) / np.maximum(keep.sum((1, 2)), 1)
    return np.where(hide, np.round(fill).astype(np.uint8)[:, None, None], out)


def macro_auc(y: np.ndarray, probs: np.ndarray, present: list[int]) -> float:
    """The mean one-vs-rest ROC-AUC of ``probs`` (N, K) over the classes ``present`` (each with images on
    both sides)."""
    from sklearn.metrics import roc_auc_score

    return float(np.mean([roc_auc_score(y == c, probs[:, c]) for c in present]))


def occlusion(lm: LoadedModel, images, y: np.ndarray, lungs: LungFields | None = None) -> dict:
    """Macro one-vs-rest ROC-AUC of the model's probabilities on the images, with the lungs hidden (each
    image's dilated lung mask from ``lungs``, else the fixed box) and with only the border kept. AUC, not
    accuracy: an occluded image often gets the same top class whatever it shows, while the probabilities
    still rank the classes by what is left."""

    k = len(lm.classes)
    base = {
        "test": "occlusion",
        "chance": 0.5,
        "lung_box": LUNG_BOX,
        "border": BORDER,
        "lungs": lungs.describe() if lungs is not None else {"lung_fields": "box", "lung_box": LUNG_BOX},
        "metric": "macro one-vs-rest ROC-AUC",
        "thresholds": {"above_chance_warning": OCCLUSION_WARN, "above_chance_fail": OCCLUSION_FAIL},
    }
    present = [c for c in range(k) if 0 < (y == c).sum() < len(y)]
    if len(present) < 2:
        return {**base, "verdict": "skipped", "reason": "the evaluated images hold one class only"}
    scores = {}
    for mode in ("none", "lungs", "border"):
        logits = []
        for start, chunk in zip(range(0, len(images), CHUNK), chunks(images)):
            hide = (
                lungs.regions(np.arange(start, start + len(chunk))) if lungs is not None and mode == "lungs" else None
            )
            logits.append(lm.logits(occlude(chunk, mode, hide)))
        probs = softmax(np.concatenate(logits))
        scores[mode] = macro_auc(y, probs, present)
    worst = max(scores["lungs"], scores["border"]) - 0.5
    verdict = threshold_verdict(worst, OCCLUSION_WARN, OCCLUSION_FAIL)
    where = lungs.said() if lungs is not None else "the lungs are a fixed central box"
    return {
        **base,
        "verdict": verdict,
        "auc": scores,
        "n": int(len(y)),
        "reading": (
            f"Macro AUC {scores['none']:.2f} on the images, {scores['lungs']:.2f} with the lungs hidden and "
            f"{scores['border']:.2f} with only the border kept (chance 0.50): "
            + (
                "the model still tells the classes apart without the lungs, so it uses something else"
                if verdict != "ok"
                else "without the lungs it is near chance, as it should be"
            )
            + f"; {where}."
        ),
    }
