"""Lung-field input (`covidnet train --lungs crop|mask`): the operation on known shapes, against
torchvision's resized crop; and a model trained with it on phantoms, whose segmenter travels in its
checkpoint and its ONNX graph, so eval, predict, export and the audit all apply it."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_cli import covidnet
from torchvision.transforms.v2 import functional as TF

from covidnet.checkpoint import read_checkpoint
from covidnet.errors import ConfigError, CovidnetError
from covidnet.models.lung_field import LungFieldClassifier, apply_lung_field
from covidnet.predict import PredictConfig, predict_paths
from covidnet.runtime import load
from covidnet.train import TrainConfig, train


def _image(side=32, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).random((1, 1, side, side), dtype=np.float32))


def _field(side, y0, y1, x0, x1):
    f = torch.zeros(1, 1, side, side)
    f[..., y0 : y1 + 1, x0 : x1 + 1] = 1
    return f


def test_mask_keeps_the_lungs_and_sets_the_rest_to_its_own_mean():
    x, f = _image(), _field(32, 8, 23, 4, 27)
    out = apply_lung_field(x, f, "mask")
    inside = f.bool()
    assert torch.equal(out[inside], x[inside])
    assert torch.allclose(out[~inside], x[~inside].mean().expand(int((~inside).sum())), atol=1e-6)


def test_crop_of_a_square_field_is_torchvisions_resized_crop():
    """A square field: the crop is the box resampled (bilinear, pixel centres), which is what torchvision's
    resized_crop computes without antialiasing (an enlargement needs none). One difference, by design:
    torchvision cuts the box out first, so its outermost output pixels clamp to the box's edge; ours
    samples the image, so they blend with the pixels just outside it. Everything within is the same."""
    x, f = _image(), _field(32, 6, 21, 9, 24)  # 16 x 16
    ours = apply_lung_field(x, f, "crop")
    theirs = TF.resized_crop(x, 6, 9, 16, 16, [32, 32], antialias=False)
    assert torch.allclose(ours[..., 1:-1, 1:-1], theirs[..., 1:-1, 1:-1], atol=1e-5)
    assert not torch.allclose(ours[..., 0, :], theirs[..., 0, :], atol=1e-5)


def test_crop_squares_the_box_about_its_centre_and_an_empty_field_changes_nothing():
    x = _image()
    wide = apply_lung_field(x, _field(32, 12, 19, 4, 27), "crop")  # 8 rows x 24 columns: squared to 24 x 24
    theirs = TF.resized_crop(x, 4, 4, 24, 24, [32, 32], antialias=False)
    assert torch.allclose(wide[..., 1:-1, 1:-1], theirs[..., 1:-1, 1:-1], atol=1e-5)
    for mode in ("crop", "mask"):
        assert torch.allclose(apply_lung_field(x, torch.zeros_like(x), mode), x, atol=1e-6)


@pytest.fixture(scope="module")
def lung_field_run(trained, tmp_path_factory):
    """A classifier trained briefly with --lungs mask on the segmenter's phantoms, its segmenter given
    by --lung-model."""
    ds, lungs = trained
    out = tmp_path_factory.mktemp("field") / "run"
    train(
        TrainConfig(
            data=str(ds),
            out=str(out),
            epochs=1,
            lr=3e-4,
            lungs="mask",
            lung_model=str(lungs),
            progress=False,
            device="cpu",
        )
    )
    return ds, lungs, out / "best.pt"


def test_the_checkpoint_carries_its_segmenter_and_the_model_applies_it(lung_field_run):
    ds, lungs, ckpt = lung_field_run
    c = read_checkpoint(ckpt)
    assert (
        c["preprocess"]["lungs"] == "mask"
        and c["arch"] == "lung-field"
        and c["arch_args"]["segmenter"]["arch"] == "lung-unet-tiny"
    )
    seg = read_checkpoint(lungs)["model"]
    assert all(torch.equal(c["model"][f"segmenter.{k}"], v) for k, v in seg.items())  # frozen: as trained
    lm = load(ckpt, "cpu")
    assert isinstance(lm.model, LungFieldClassifier)
    from covidnet.data.store import open_store

    store = open_store(ds)
    images = store.read(store.rows("test")[:4])
    x = lm.contract.model_input(torch.from_numpy(images[:, None]).float() / 255)
    kept = lm.model.field(x)
    with torch.no_grad():
        logits = lm.model.net(kept)
    assert np.allclose(lm.logits(images), logits.numpy(), atol=1e-5)  # eval and predict go through the field
    assert not torch.allclose(kept, x)  # something outside the lungs was set to its mean
    cams = lm.cams(images)
    assert cams.shape[0] == 4 and np.isfinite(cams).all()


def test_export_puts_the_segmenter_in_the_graph(lung_field_run, tmp_path):
    ds, _, ckpt = lung_field_run
    out = tmp_path / "m.onnx"
    r = covidnet("export", "--checkpoint", str(ckpt), "--out", str(out), "--data", str(ds), "--json", f"{out}.json")
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "m.onnx.json").read_text())
    assert report["fp32"]["max_abs_prob_diff"] <= report["fp32"]["tolerance"]
    files = [str(f) for f in sorted((ds.parent / "phantoms" / "images").glob("*.png"))[:4]]
    torch_calls = list(
        predict_paths(PredictConfig(files, checkpoint=str(ckpt), device="cpu"))
    )  # raw files: segmented by the model itself
    onnx_calls = list(predict_paths(PredictConfig(files, onnx=str(out), device="cpu")))
    for a, b in zip(torch_calls, onnx_calls, strict=True):
        assert max(abs(a["probabilities"][k] - b["probabilities"][k]) for k in a["probabilities"]) < 1e-3


def test_without_a_segmenter_it_says_so_before_training(trained, tmp_path):
    ds, lungs = trained
    with pytest.raises(ConfigError, match="--lungs mask needs a lung segmenter"):
        train(TrainConfig(data=str(ds), out=str(tmp_path / "r"), lungs="mask", progress=False, device="cpu"))
    assert not (tmp_path / "r").exists()
    with pytest.raises(CovidnetError, match="not found"):
        train(TrainConfig(data=str(ds), out=str(tmp_path / "r"), lungs="crop", lung_model=str(tmp_path / "no.pt")))
    assert not (tmp_path / "r").exists()


def test_a_field_on_a_batch_agrees_with_the_same_images_one_by_one():
    """The per-image fill and box do not leak across the batch."""
    x = torch.cat([_image(seed=1), _image(seed=2)])
    f = torch.cat([_field(32, 2, 20, 3, 30), _field(32, 10, 29, 0, 15)])
    for mode in ("crop", "mask"):
        both = apply_lung_field(x, f, mode)
        one = torch.cat([apply_lung_field(x[k : k + 1], f[k : k + 1], mode) for k in range(2)])
        assert torch.allclose(both, one, atol=1e-6)
        assert F.mse_loss(both[0], both[1]) > 0
