"""The one training loop reproduces the two it replaced: the runs that wrote the legacy fixtures
(tests/fixtures/legacy/make_fixtures.py, with ``covidnet train`` and ``covidnet lungs train`` of that
time), repeated with today's loop on the same phantoms and seeds, end with the same weights."""

from pathlib import Path

import pytest
import torch

import covidnet.tasks.image
from covidnet.checkpoint import read_checkpoint
from covidnet.data.build import BuildConfig, SourceSpec, build_dataset
from covidnet.data.lungmasks import MaskSpec
from covidnet.data.synth import MASKS_DIR, SynthConfig, write_phantom_dataset, write_severity_file
from covidnet.models import create_model
from covidnet.train import TrainConfig, train

LEGACY = Path(__file__).resolve().parents[1] / "fixtures" / "legacy"
TINY = dict(widths=(8, 16, 24, 32), depths=(1, 1, 1, 1), stem_channels=8, head_grid=1, head_hidden=(16,))


def tiny_create(name, num_classes=3, in_channels=3, **kw):
    return create_model(name, num_classes, in_channels, **({**TINY, **kw} if name.startswith("covidnet") else kw))


@pytest.fixture(scope="module")
def legacy_ds(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("legacy")
    src = write_phantom_dataset(work / "phantoms", SynthConfig(n=80, seed=3, size=128), progress=False)
    sev = write_severity_file(src, work / "severity.csv", labels=("normal", "pneumonia", "COVID-19"))
    build_dataset(
        BuildConfig(
            sources=[SourceSpec("cohen", src, "cohen")],
            out=work / "ds",
            size=64,
            val_fraction=0.2,
            test_fraction=0.2,
            workers=1,
            progress=False,
            severity=sev,
            lung_masks=[MaskSpec("phantom", src / MASKS_DIR)],
        )
    )
    return work / "ds"


def assert_same_weights(ours: dict, theirs: dict) -> None:
    assert set(ours) == set(theirs)
    for k, v in theirs.items():
        assert torch.allclose(ours[k].float(), v.float(), atol=1e-6), k


@pytest.mark.slow
def test_classification_ends_with_the_weights_the_old_covidnet_train_ended_with(legacy_ds, tmp_path, monkeypatch):
    monkeypatch.setattr(covidnet.tasks.image, "create_model", tiny_create)
    fast = dict(epochs=2, batch_size=8, lr=3e-3, progress=False, precise_bn=16, device="cpu")
    train(TrainConfig(data=str(legacy_ds), out=str(tmp_path / "cls"), **fast))
    assert_same_weights(read_checkpoint(tmp_path / "cls" / "last.pt")["model"],
                        read_checkpoint(LEGACY / "classification_last.pt")["model"])  # fmt: skip


@pytest.mark.slow
def test_segmentation_ends_with_the_weights_the_old_covidnet_lungs_train_ended_with(legacy_ds, tmp_path):
    cfg = TrainConfig(data=str(legacy_ds), out=str(tmp_path / "lungs"), task="segmentation", arch="lung-unet-tiny",
                      epochs=2, batch_size=4, lr=3e-3, progress=False, device="cpu")  # fmt: skip
    train(cfg)
    ours, theirs = read_checkpoint(tmp_path / "lungs" / "best.pt"), read_checkpoint(LEGACY / "lungs.pt")
    assert_same_weights(ours["model"], theirs["model"])
    assert ours["best_score"]["value"] == pytest.approx(theirs["best_score"]["value"], abs=1e-9)
