"""Lung segmentation: Dice and IoU of both lungs together and of each lung where the masks allow, and the
95th-percentile Hausdorff distance between boundaries (HD95), each image's figures averaged over the
images, with 95 % intervals from the patient bootstrap.

Conventions (each checked against scikit-image, SciPy or MONAI in ``tests/evaluate/test_segmentation.py``):

* Masks are boolean (H, W). ``valid`` marks the pixels that count: an annotation's ignore pixels (127:
  pacemakers, lines, markup) are taken out of both masks before anything is computed.
* Dice = 2|A∩B| / (|A| + |B|), IoU = |A∩B| / |A∪B|; both 1 when A and B are empty.
* HD95: the boundary of a mask is its pixels less its erosion (``scipy.ndimage.binary_erosion``); each
  boundary pixel of one mask has a Euclidean distance to the nearest boundary pixel of the other
  (``scipy.ndimage.distance_transform_edt``); HD95 is the larger of the two directed 95th percentiles, as
  MONAI's ``compute_hausdorff_distance(percentile=95)``. In pixels of the stored image; NaN (left out of
  the mean and counted under ``undefined``) when either mask is empty.
* Left and right: every 8-connected component of a mask goes to the side of the image's vertical midline
  its centroid lies on. The patient's right lung is on the image's left (the patient faces the viewer).
  A lung is scored on its own only where the truth has lung on both sides; elsewhere its figures are NaN.
"""

from __future__ import annotations

import numpy as np

from .bootstrap import bootstrap_info, patient_bootstrap

PARTS = ("lungs", "right", "left")  # both together; the patient's right lung (image left); the left lung
SEGMENTATION_METRICS = ("dice", "iou", "hd95")


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    union = int((a | b).sum())
    return 1.0 if union == 0 else int((a & b).sum()) / union


def boundary(mask: np.ndarray) -> np.ndarray:
    """The mask's pixels that touch the outside (4-neighbourhood): the mask less its erosion. The image's
    edge counts as outside, so a mask that fills the image has its frame as boundary."""
    from scipy.ndimage import binary_erosion

    mask = np.asarray(mask, bool)
    return mask & ~binary_erosion(mask, border_value=0)


def directed_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """For each boundary pixel of ``a``, its Euclidean distance (px) to the nearest boundary pixel of ``b``."""
    from scipy.ndimage import distance_transform_edt

    edge_a, edge_b = boundary(a), boundary(b)
    return distance_transform_edt(~edge_b)[edge_a]


def hd95(a: np.ndarray, b: np.ndarray, percentile: float = 95.0) -> float:
    """The symmetric ``percentile`` Hausdorff distance between the boundaries of ``a`` and ``b`` (px): the
    larger directed percentile; 100 gives the Hausdorff distance. NaN when either mask is empty."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    if not a.any() or not b.any():
        return float("nan")
    ab, ba = directed_distances(a, b), directed_distances(b, a)
    return float(max(np.percentile(ab, percentile), np.percentile(ba, percentile)))


def split_lungs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the patient's right lung, the left lung): the mask's 8-connected components on the image's left and
    right of the vertical midline, each by its centroid."""
    from scipy.ndimage import center_of_mass, label

    mask = np.asarray(mask, bool)
    labels, n = label(mask, structure=np.ones((3, 3), bool))
    right, left = np.zeros_like(mask), np.zeros_like(mask)
    if n:
        centres = center_of_mass(mask, labels, range(1, n + 1))
        midline = (mask.shape[1] - 1) / 2
        for k, (_, col) in enumerate(centres, start=1):
            (right if col < midline else left)[labels == k] = True
    return right, left


def image_metrics(pred: np.ndarray, truth: np.ndarray, valid: np.ndarray | None = None) -> dict[str, float]:
    """``{"lungs.dice", "lungs.iou", "lungs.hd95", "right.dice", …, "left.hd95"}`` of one image: the
    predicted mask against the truth, both cut to ``valid`` (None: every pixel)."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    if valid is not None:
        pred, truth = pred & valid, truth & valid
    out = {"lungs.dice": dice(pred, truth), "lungs.iou": iou(pred, truth), "lungs.hd95": hd95(pred, truth)}
    (t_right, t_left), (p_right, p_left) = split_lungs(truth), split_lungs(pred)
    both = t_right.any() and t_left.any()  # the masks allow left and right only where the truth has both
    for part, p, t in (("right", p_right, t_right), ("left", p_left, t_left)):
        out[f"{part}.dice"] = dice(p, t) if both else float("nan")
        out[f"{part}.iou"] = iou(p, t) if both else float("nan")
        out[f"{part}.hd95"] = hd95(p, t) if both else float("nan")
    return out


def per_image_metrics(pred: np.ndarray, truth: np.ndarray, valid: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """``image_metrics`` of each of N images (N, H, W), as one array per key."""
    rows = [image_metrics(pred[k], truth[k], None if valid is None else valid[k]) for k in range(len(pred))]
    keys = [f"{p}.{m}" for p in PARTS for m in SEGMENTATION_METRICS]
    return {k: np.array([r[k] for r in rows], dtype=np.float64) for k in keys}


def _means(per_image: dict[str, np.ndarray], idx: np.ndarray) -> dict[str, float]:
    out = {}
    for key, values in per_image.items():
        v = values[idx]
        v = v[~np.isnan(v)]
        out[key] = float(v.mean()) if len(v) else float("nan")
    return out


def segmentation_metrics(per_image: dict[str, np.ndarray], patients, resamples: int = 1000, seed: int = 0) -> dict:
    """The segmentation evaluation JSON from ``per_image_metrics``: ``{"n", "n_patients", "lungs": {"dice":
    {"value", "ci95"}, "iou", "hd95"}, "right": …, "left": …, "scored": {part: images}, "undefined": {part:
    images without an HD95}, "bootstrap"}``; each value is the mean over images, its interval from resampling
    patients."""
    cis = patient_bootstrap(lambda idx: _means(per_image, idx), patients, resamples, seed)
    return {
        "n": int(len(patients)),
        "n_patients": int(len(set(patients))),
        **{p: {m: cis[f"{p}.{m}"] for m in SEGMENTATION_METRICS} for p in PARTS},
        "scored": {p: int(np.isfinite(per_image[f"{p}.dice"]).sum()) for p in PARTS},
        "undefined": {
            p: int((np.isfinite(per_image[f"{p}.dice"]) & ~np.isfinite(per_image[f"{p}.hd95"])).sum()) for p in PARTS
        },
        "bootstrap": bootstrap_info(resamples, seed),
    }


def box_mask(size: int, box: tuple[float, float, float, float]) -> np.ndarray:
    """A (size, size) mask of the box (x0, y0, x1, y1, fractions of the side): the fixed-box baseline."""
    x0, y0, x1, y1 = (round(v * size) for v in box)
    mask = np.zeros((size, size), bool)
    mask[y0:y1, x0:x1] = True
    return mask
