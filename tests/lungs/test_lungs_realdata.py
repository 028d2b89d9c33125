"""Real lungs: the cohen images of ../shared/data with the V7 Labs masks, built small, a segmenter trained
briefly on the CPU, evaluated on held-out patients against the audit's fixed lung box."""

import pytest

from covidnet.audit import LUNG_BOX
from covidnet.data.build import BuildConfig, SourceSpec, build_dataset
from covidnet.data.lungmasks import MaskSpec
from covidnet.lungs.evaluate import LungsEvalConfig, evaluate_lungs
from covidnet.train import TrainConfig, train

pytestmark = [pytest.mark.realdata, pytest.mark.slow]


def test_a_brief_training_on_the_v7labs_masks_beats_the_fixed_box(shared_data, tmp_path):
    report = build_dataset(
        BuildConfig(
            sources=[SourceSpec("cohen", shared_data / "sources" / "cohen", "cohen")],
            out=tmp_path / "ds",
            size=64,
            val_fraction=0.15,
            test_fraction=0.2,
            workers=2,
            progress=False,
            lung_masks=[MaskSpec("v7labs", shared_data / "lungmasks" / "v7labs")],
        )
    )
    masked = report["lung_masks"]["in_dataset"]
    assert report["lung_masks"]["excluded"]["count"] == 0 and sum(masked["images"].values()) == 329
    train(
        TrainConfig(
            task="segmentation",
            data=str(tmp_path / "ds"),
            out=str(tmp_path / "run"),
            arch="lung-unet-tiny",
            epochs=8,
            batch_size=8,
            lr=3e-3,
            progress=False,
            device="cpu",
        )  # fmt: skip
    )
    m = evaluate_lungs(
        LungsEvalConfig(
            str(tmp_path / "run" / "best.pt"), str(tmp_path / "ds"), "test", resamples=200, device="cpu", box=LUNG_BOX
        )
    )
    assert m["n"] == masked["images"]["test"] >= 30 and m["n_patients"] == masked["patients"]["test"]
    box = m["box_baseline"]["lungs"]["dice"]
    assert m["lungs"]["dice"]["ci95"][0] > box["ci95"][1], (m["lungs"]["dice"], box)  # the intervals do not meet
    assert m["lungs"]["dice"]["value"] >= 0.85
