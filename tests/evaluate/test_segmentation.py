"""``covidnet.metrics.segmentation`` against independent implementations on shapes with known answers:
scikit-learn's F1 and Jaccard, scikit-image's discs, boundaries and Hausdorff distance, SciPy's pairwise
distances, MONAI's HD95."""

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist
from skimage.draw import disk
from skimage.metrics import hausdorff_distance
from skimage.segmentation import find_boundaries
from sklearn.metrics import f1_score, jaccard_score

from covidnet.metrics.segmentation import (
    box_mask,
    dice,
    hd95,
    image_metrics,
    iou,
    per_image_metrics,
    segmentation_metrics,
    split_lungs,
)

N = 128


def disc(centre, radius, shape=(N, N)) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[disk(centre, radius, shape=shape)] = True
    return m


def square(top, left, side, shape=(N, N)) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[top : top + side, left : left + side] = True
    return m


def lens_area(r: float, d: float) -> float:
    """The area two circles of radius r, centres d apart, share."""
    return 2 * r**2 * np.arccos(d / (2 * r)) - d / 2 * np.sqrt(4 * r**2 - d**2)


def test_dice_and_iou_of_two_discs_are_scikit_learns_and_the_geometry_says_so():
    r, d = 30, 20
    a, b = disc((64, 54), r), disc((64, 74), r)
    assert dice(a, b) == pytest.approx(f1_score(b.ravel(), a.ravel()), abs=1e-12)
    assert iou(a, b) == pytest.approx(jaccard_score(b.ravel(), a.ravel()), abs=1e-12)
    lens, area = lens_area(r, d), np.pi * r**2
    assert dice(a, b) == pytest.approx(lens / area, abs=0.01)  # 0.5789 for circles; pixels add < 1 %
    assert iou(a, b) == pytest.approx(lens / (2 * area - lens), abs=0.01)
    assert dice(a, a) == iou(a, a) == 1.0 and dice(a, np.zeros_like(a)) == 0.0
    assert dice(np.zeros_like(a), np.zeros_like(a)) == 1.0  # nothing to find, nothing found


def boundary_points(m: np.ndarray) -> np.ndarray:
    return np.argwhere(find_boundaries(m, mode="inner", connectivity=1))


@pytest.mark.filterwarnings("ignore::FutureWarning")  # MONAI warns about its own default argument
@pytest.mark.parametrize("shift", [(3, 5), (0, 7), (4, 4)])
def test_hd95_of_shifted_squares_agrees_with_scipy_scikit_image_and_monai(shift):
    from monai.metrics import compute_hausdorff_distance

    a, b = square(20, 20, 40), square(20 + shift[0], 20 + shift[1], 40)
    pa, pb = boundary_points(a), boundary_points(b)
    d = cdist(pa, pb)
    brute = max(np.percentile(d.min(1), 95), np.percentile(d.min(0), 95))
    assert hd95(a, b) == pytest.approx(brute, abs=1e-9)
    t = lambda m: torch.from_numpy(m)[None, None].float()  # noqa: E731
    assert hd95(a, b) == pytest.approx(compute_hausdorff_distance(t(a), t(b), percentile=95).item(), abs=1e-4)
    # the 100th percentile is the Hausdorff distance: corner to corner, the length of the shift
    assert hd95(a, b, percentile=100) == pytest.approx(np.hypot(*shift), abs=1e-9)
    edges = find_boundaries(a, mode="inner"), find_boundaries(b, mode="inner")
    assert hd95(a, b, percentile=100) == pytest.approx(hausdorff_distance(*edges))
    assert hd95(a, a) == 0.0 and np.isnan(hd95(a, np.zeros_like(a)))


def test_ignored_pixels_count_for_neither_mask():
    truth = disc((64, 64), 30)
    pred = truth.copy()
    pred[60:70, :] = ~pred[60:70, :]  # wrong only on a band ...
    valid = np.ones_like(truth)
    valid[60:70, :] = False  # ... that the annotation says to ignore
    m = image_metrics(pred, truth, valid)
    assert m["lungs.dice"] == 1.0 and m["lungs.hd95"] == 0.0
    assert image_metrics(pred, truth)["lungs.dice"] < 0.95


def two_lungs() -> np.ndarray:
    return disc((64, 35), 20) | disc((64, 93), 20)  # image left: the patient's right lung


def test_left_and_right_are_the_components_either_side_of_the_midline():
    truth = two_lungs()
    right, left = split_lungs(truth)
    assert np.array_equal(right, disc((64, 35), 20)) and np.array_equal(left, disc((64, 93), 20))
    only_right = disc((64, 35), 20)  # the model missed the patient's left lung
    m = image_metrics(only_right, truth)
    assert m["right.dice"] == 1.0 and m["left.dice"] == 0.0 and np.isnan(m["left.hd95"])
    assert m["lungs.dice"] == pytest.approx(2 * only_right.sum() / (only_right.sum() + truth.sum()))
    one_blob = image_metrics(truth, disc((64, 64), 40))  # a truth the masks cannot split: no lung on its own
    assert np.isnan(one_blob["right.dice"]) and np.isnan(one_blob["left.iou"]) and one_blob["lungs.dice"] > 0


def test_the_evaluation_averages_images_and_resamples_patients():
    truth = np.stack([two_lungs()] * 4)
    pred = truth.copy()
    pred[1] = np.roll(truth[1], 4, axis=1)
    pred[3] = False  # nothing found
    per = per_image_metrics(pred, truth)
    m = segmentation_metrics(per, ["p1", "p1", "p2", "p3"], resamples=200, seed=0)
    assert m["n"] == 4 and m["n_patients"] == 3
    expected = np.mean([1.0, dice(pred[1], truth[1]), 1.0, 0.0])
    assert m["lungs"]["dice"]["value"] == pytest.approx(expected)
    lo, hi = m["lungs"]["dice"]["ci95"]
    assert lo <= expected <= hi and lo < hi
    assert m["lungs"]["hd95"]["value"] == pytest.approx(np.mean([0.0, hd95(pred[1], truth[1]), 0.0]))
    assert m["undefined"]["lungs"] == 1 and m["scored"]["right"] == 4
    assert m["bootstrap"] == {"resamples": 200, "unit": "patient", "seed": 0}


def test_the_fixed_box_covers_its_fractions_of_the_side():
    box = box_mask(100, (0.12, 0.06, 0.88, 0.82))
    assert box.sum() == (88 - 12) * (82 - 6) and box[6, 12] and not box[5, 12] and not box[6, 88]
