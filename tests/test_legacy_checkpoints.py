"""Checkpoints written before the one training loop (tests/fixtures/legacy, made by make_fixtures.py with
the code of that time, at 64 px) load with today's code and give the same outputs, for every task: a
classifier calibrated with a temperature and an operating point, a severity head, a risk head, a lung
segmenter (task "lungs" then, "segmentation" now), a lung-field classifier (its classifier's arch plus
``lung_model`` then, the registered ``lung-field`` model now), and a last.pt that resumes."""

from pathlib import Path

import numpy as np
import pytest

from covidnet.checkpoint import read_checkpoint
from covidnet.runtime import load

LEGACY = Path(__file__).resolve().parent / "fixtures" / "legacy"
EXPECTED = np.load(LEGACY / "expected.npz")


@pytest.mark.parametrize(
    "name, task",
    [
        ("classification", "classification"),
        ("severity", "severity"),
        ("risk", "risk"),
        ("lung_field_crop", "classification"),
        ("classification_last", "classification"),
    ],
)
def test_an_earlier_versions_checkpoint_gives_the_same_outputs_and_features(name, task):
    lm = load(LEGACY / f"{name}.pt", "cpu")
    assert lm.task.name == task
    np.testing.assert_allclose(lm.logits(EXPECTED["images"]), EXPECTED[name], rtol=1e-4, atol=1e-5)
    if f"{name}_features" in EXPECTED:
        np.testing.assert_allclose(lm.features(EXPECTED["images"]), EXPECTED[f"{name}_features"], rtol=1e-4, atol=1e-5)


def test_an_earlier_lung_segmenter_is_a_segmentation_model_with_the_same_probabilities():
    lm = load(LEGACY / "lungs.pt", "cpu")
    assert lm.task.name == "segmentation" and lm.meta["task"] == "segmentation"
    np.testing.assert_allclose(lm.probabilities(EXPECTED["images"]), EXPECTED["lungs"], rtol=1e-4, atol=1e-5)


def test_an_earlier_lung_field_checkpoint_is_rebuilt_as_the_registered_lung_field_model():
    ckpt = read_checkpoint(LEGACY / "lung_field_crop.pt")
    assert ckpt["arch"] == "lung-field" and "lung_model" not in ckpt
    args = ckpt["arch_args"]
    assert args["classifier"]["arch"] == "covidnet-cxr3b" and args["segmenter"]["arch"] == "lung-unet-tiny"
    assert args["mode"] == ckpt["preprocess"]["lungs"] == "crop"


def test_an_earlier_calibration_still_decides_as_it_did():
    lm = load(LEGACY / "classification.pt", "cpu")
    t = lm.meta["temperature"]
    assert t and lm.meta["operating_point"]["target"] == "sensitivity=0.9"
    z = EXPECTED["classification"] / t
    want = np.exp(z - z.max(1, keepdims=True))
    np.testing.assert_allclose(lm.probabilities(EXPECTED["images"]), want / want.sum(1, keepdims=True), rtol=1e-4)
    results = lm.predict(EXPECTED["images"])
    assert all("triage" in r for r in results)


def test_every_task_records_its_best_score_the_same_way_after_upgrade():
    for name, metric, mode in [("classification", "val_loss", "min"), ("lungs", "val_dice", "max")]:
        best = read_checkpoint(LEGACY / f"{name}.pt")["best_score"]
        assert best["metric"] == metric and best["mode"] == mode and np.isfinite(best["value"])


def test_a_torchvision_imagenet_run_no_longer_asks_for_imagenets_weights_to_be_rebuilt():
    # --init imagenet of a torchvision baseline recorded weights="imagenet" among the arguments, so rebuilding
    # the network downloaded ImageNet's weights (or hung offline) only to overwrite them with the checkpoint's
    from covidnet.checkpoint import upgrade

    args = {"num_classes": 3, "in_channels": 1, "weights": "imagenet"}
    assert upgrade({"arch": "resnet50", "arch_args": args})["arch_args"] == {"num_classes": 3, "in_channels": 1}
    behind = {"arch": "lung-field", "arch_args": {"classifier": {"arch": "resnet50", "arch_args": args}}}
    assert "weights" not in upgrade(behind)["arch_args"]["classifier"]["arch_args"]
    assert args["weights"] == "imagenet"  # the caller's dict is left as it was
