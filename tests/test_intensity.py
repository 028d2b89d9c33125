"""--intensity equalize|clahe: scikit-image's per-image standardisation, recorded in the checkpoint's
contract and applied alike by training, eval, predict and the ONNX backend."""

import csv
from pathlib import Path

import numpy as np
import pytest
from phantomdata import make_dataset
from skimage import exposure

from covidnet.checkpoint import read_checkpoint
from covidnet.contract import Contract
from covidnet.errors import CovidnetError
from covidnet.evaluate import predict_store
from covidnet.predict import PredictConfig, predict_paths
from covidnet.runtime import load
from covidnet.tasks import softmax
from covidnet.train import TrainConfig, train


def test_standardise_is_scikit_images_equalisation_and_clahe_per_image():
    rng = np.random.default_rng(0)
    images = np.stack([rng.integers(40, 120, (64, 64)), rng.integers(100, 250, (64, 64))]).astype(np.uint8)
    assert Contract().standardise(images) is images  # none: untouched
    eq = Contract(intensity="equalize").standardise(images)
    for k in range(2):
        ref = np.clip(np.round(exposure.equalize_hist(images[k], nbins=256) * 255), 0, 255).astype(np.uint8)
        np.testing.assert_array_equal(eq[k], ref)
    assert abs(float(eq[0].mean()) - float(eq[1].mean())) < 5  # two exposures, one grey-level distribution
    cl = Contract(intensity="clahe").standardise(images)
    ref = exposure.equalize_adapthist(images[1], kernel_size=8, clip_limit=0.01)
    np.testing.assert_array_equal(cl[1], np.clip(np.round(ref * 255), 0, 255).astype(np.uint8))
    with pytest.raises(CovidnetError, match="--intensity must be one of none, equalize, clahe"):
        Contract(intensity="gamma")


@pytest.mark.slow
def test_clahe_travels_in_the_contract_to_eval_predict_and_onnx(tmp_path):
    ds = make_dataset(tmp_path, n=30, size=64)
    run = tmp_path / "run"
    train(
        TrainConfig(
            data=str(ds),
            out=str(run),
            epochs=1,
            batch_size=8,
            lr=3e-4,
            device="cpu",
            precise_bn=8,
            progress=False,
            intensity="clahe",
        )
    )
    ckpt = run / "best.pt"
    assert read_checkpoint(ckpt)["preprocess"]["intensity"] == "clahe"
    lm = load(ckpt, "cpu")
    stored = predict_store(lm, str(ds), "val")
    with open(ds / "records.csv", newline="") as f:
        by_name = {Path(r["path"]).name: r["path"] for r in csv.DictReader(f)}
    files = [by_name[n] for n in stored.names]
    p_eval = softmax(stored.out)
    p_raw = [
        [r["probabilities"][c] for c in lm.classes]
        for r in predict_paths(PredictConfig(files, checkpoint=str(ckpt), device="cpu"))
    ]
    np.testing.assert_allclose(np.array(p_raw), p_eval, atol=1e-5)
    # the control: without the standardisation the model sees other pixels and answers otherwise
    from covidnet.runtime import predict_logits, rows_reader

    plain = lm.model
    raw = predict_logits(
        plain,
        rows_reader(np.stack([Contract(stored_size=64).load(f) for f in files])),
        np.arange(len(files)),
        8,
        lm.contract,
        lm.device,
    ).numpy()
    assert np.abs(softmax(raw) - p_eval).max() > 1e-4

    from covidnet.export import ExportConfig, export_model

    export_model(ExportConfig(checkpoint=str(ckpt), out=str(tmp_path / "m.onnx"), data=str(ds), quiet=True))
    p_onnx = [
        [r["probabilities"][c] for c in lm.classes]
        for r in predict_paths(PredictConfig(files, onnx=str(tmp_path / "m.onnx")))
    ]
    np.testing.assert_allclose(np.array(p_onnx), p_eval, atol=1e-4)
