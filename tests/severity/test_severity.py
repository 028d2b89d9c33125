"""Severity (COVIDNet-S) and risk (COVID-RiskNet) heads: metrics against scikit-learn and scipy, the
heads' decoding, training on phantoms whose true extent is known, eval, predict, and bad input."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from phantomdata import make_dataset
from scipy.stats import spearmanr
from sklearn.metrics import accuracy_score, f1_score, mean_absolute_error, mean_squared_error, r2_score
from test_cli import covidnet

from covidnet.checkpoint import read_checkpoint
from covidnet.errors import ConfigError
from covidnet.evaluate import EvalConfig, evaluate_checkpoint
from covidnet.metrics.ordinal import risk_metrics
from covidnet.metrics.regression import severity_metrics
from covidnet.runtime import load
from covidnet.tasks import RiskTask, SeverityTask, bin_names, parse_bins
from covidnet.train import TrainConfig, train

FAST = dict(epochs=1, batch_size=8, lr=3e-4, progress=False, precise_bn=32, device="cpu")


@pytest.fixture(scope="module")
def sev_ds(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("sevds"), n=60, size=32, severity=True)


@pytest.fixture(scope="module")
def sev_ckpt(sev_ds, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("sevrun") / "run"
    train(TrainConfig(data=str(sev_ds), out=str(run), task="severity", **FAST))
    return run / "best.pt"


# --- metrics and heads --------------------------------------------------------------------------------


def test_severity_metrics_agree_with_sklearn_and_scipy():
    rng = np.random.default_rng(0)
    y = rng.uniform(0, 8, (40, 2))
    pred = np.clip(y + rng.normal(0, 1.2, y.shape), 0, 8)
    patients = [f"p{i // 2}" for i in range(40)]
    m = severity_metrics(y, pred, patients, resamples=200, seed=1)
    for k, s in enumerate(("geographic", "opacity")):
        t, p = y[:, k], pred[:, k]
        assert m[s]["mae"]["value"] == pytest.approx(mean_absolute_error(t, p))
        assert m[s]["rmse"]["value"] == pytest.approx(np.sqrt(mean_squared_error(t, p)))
        assert m[s]["r2"]["value"] == pytest.approx(r2_score(t, p))
        assert m[s]["spearman"]["value"] == pytest.approx(spearmanr(t, p).statistic)
        lo, hi = m[s]["r2"]["ci95"]
        assert lo < m[s]["r2"]["value"] < hi
    assert m["n"] == 40 and m["n_patients"] == 20 and m["bootstrap"]["unit"] == "patient"


def test_risk_metrics_agree_with_sklearn():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 50)
    pred = np.clip(y + rng.integers(-1, 2, 50), 0, 3)
    m = risk_metrics(y, pred, bin_names((3, 5, 10)), [str(i) for i in range(50)], resamples=100)
    assert m["accuracy"]["value"] == pytest.approx(accuracy_score(y, pred))
    assert m["macro_f1"]["value"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["mean_abs_bin_error"]["value"] == pytest.approx(np.abs(pred - y).mean())
    assert np.array(m["confusion_matrix"]["matrix"]).sum() == 50
    assert m["confusion_matrix"]["labels"] == ["0-3 d", "3-5 d", "5-10 d", ">=10 d"]


def test_ordinal_head_decodes_bins_and_its_probabilities_sum_to_one():
    task = RiskTask(parse_bins("3,5,10"))
    out = torch.tensor([[-5.0, -5.0, -5.0], [5.0, -5.0, -5.0], [5.0, 5.0, 5.0], [5.0, 5.0, -5.0]])
    assert task.decode(out).tolist() == [0, 1, 3, 2]
    p = task.probabilities(out)
    assert np.allclose(p.sum(1), 1) and p.argmax(1).tolist() == [0, 1, 3, 2]
    y = torch.tensor([0, 1, 3, 2])
    assert float(task.loss(out * 4, y)) < 1e-6 < float(task.loss(-out, y))
    # days -> bins: [0, 3), [3, 5), [5, 10), >= 10
    assert np.digitize([0, 2.9, 3, 4, 5, 9.5, 10, 40], task.edges).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    for bad in ("5,3", "0,3", "x", ""):
        with pytest.raises(ConfigError, match="--risk-bins"):
            parse_bins(bad)


def test_severity_head_stays_on_the_0_to_8_scale_and_its_loss_is_least_at_the_truth():
    task = SeverityTask()
    assert np.allclose(task.decode(torch.tensor([[-50.0, 50.0], [0.0, 0.0]])), [[0.0, 8.0], [4.0, 4.0]])
    y = torch.tensor([[2.0, 6.0]])
    z_true = torch.logit(y / 8)
    assert float(task.loss(z_true, y)) < float(task.loss(z_true + 0.3, y))
    assert float(task.loss(z_true, y)) < float(task.loss(z_true - 0.3, y))


# --- training, eval, predict ----------------------------------------------------------------------------


def test_severity_checkpoint_describes_its_task_and_eval_matches_sklearn(sev_ckpt, sev_ds, tmp_path):
    ckpt = read_checkpoint(sev_ckpt)
    assert (
        ckpt["task"] == "severity" and ckpt["scores"] == ["geographic", "opacity"] and ckpt["score_range"] == [0.0, 8.0]
    )
    assert "classes" not in ckpt
    model = load(sev_ckpt, "cpu").model
    assert model(torch.zeros(1, 1, 32, 32)).shape == (1, 2)
    m = evaluate_checkpoint(
        EvalConfig(
            str(sev_ckpt), data=str(sev_ds), split="test", resamples=50, device="cpu", report=str(tmp_path / "rep")
        )
    )
    y = np.array([p["true"] for p in m["predictions"]])
    pred = np.array([p["pred"] for p in m["predictions"]])
    assert len(y) == m["n"] > 5 and pred.min() >= 0 and pred.max() <= 8
    assert m["geographic"]["mae"]["value"] == pytest.approx(mean_absolute_error(y[:, 0], pred[:, 0]))
    assert m["opacity"]["r2"]["value"] == pytest.approx(r2_score(y[:, 1], pred[:, 1]))
    assert m["opacity"]["spearman"]["value"] == pytest.approx(spearmanr(y[:, 1], pred[:, 1]).statistic, nan_ok=True)
    assert (tmp_path / "rep" / "severity_scatter.png").stat().st_size > 1000
    page = (tmp_path / "rep" / "index.html").read_text()
    assert "Research tool" in page and "severity_scatter.png" in page and "Spearman" in page


def test_predict_on_a_severity_checkpoint_prints_both_scores_and_writes_a_cam_per_score(sev_ckpt, sev_ds, tmp_path):
    image = next((sev_ds.parent / "phantoms" / "images").glob("*.png"))
    r = covidnet(
        "predict",
        "--checkpoint",
        str(sev_ckpt),
        str(image),
        str(tmp_path / "missing.png"),
        "--cam",
        str(tmp_path / "cams"),
    )
    assert r.returncode == 0, r.stderr
    line = next(x for x in r.stdout.splitlines() if x.startswith(str(image)))
    assert "geographic extent" in line and "/8" in line and "opacity extent" in line
    assert "missing.png: FAILED" in r.stdout and "1 images processed, 1 failed" in r.stderr
    cams = sorted(p.name for p in (tmp_path / "cams").iterdir())
    assert cams == [f"{image.stem}.geographic.cam.png", f"{image.stem}.opacity.cam.png"]
    js = covidnet("predict", "--checkpoint", str(sev_ckpt), str(image), "--json")
    d = json.loads(js.stdout.splitlines()[0])
    assert d["task"] == "severity" and set(d["scores"]) == {"geographic", "opacity"} and d["scale"] == [0.0, 8.0]
    assert all(0 <= v <= 8 for v in d["scores"].values())


def test_freeze_backbone_trains_only_the_head(sev_ds, sev_ckpt, tmp_path):
    run = tmp_path / "frozen"
    train(
        TrainConfig(data=str(sev_ds), out=str(run), task="severity", init=str(sev_ckpt), freeze_backbone=True, **FAST)
    )
    before, after = read_checkpoint(sev_ckpt)["model"], read_checkpoint(run / "last.pt")["model"]
    backbone = [k for k in after if not k.startswith(("head.", "classifier."))]
    assert backbone and all(torch.equal(before[k], after[k]) for k in backbone)  # BatchNorm statistics included
    assert not torch.equal(before["classifier.weight"], after["classifier.weight"])


def test_risk_trains_and_eval_agrees_with_sklearn(sev_ds, tmp_path):
    run = tmp_path / "risk"
    train(TrainConfig(data=str(sev_ds), out=str(run), task="risk", risk_bins="2,6", **{**FAST, "batch_size": 4}))
    ckpt = read_checkpoint(run / "best.pt")
    assert ckpt["task"] == "risk" and ckpt["risk_bins"] == [2.0, 6.0] and ckpt["classes"] == ["0-2 d", "2-6 d", ">=6 d"]
    out = tmp_path / "m.json"
    r = covidnet(
        "eval",
        "--checkpoint",
        str(run / "best.pt"),
        "--data",
        str(sev_ds),
        "--split",
        "val",
        "--json",
        str(out),
        "--resamples",
        "50",
        "--report",
        str(tmp_path / "rep"),
    )
    assert r.returncode == 0, r.stderr
    assert "macro F1" in r.stdout and "mean absolute bin error" in r.stdout
    m = json.loads(out.read_text())
    y = np.array([p["true"] for p in m["predictions"]])
    pred = np.array([p["pred"] for p in m["predictions"]])
    assert m["accuracy"]["value"] == pytest.approx(accuracy_score(y, pred))
    assert m["macro_f1"]["value"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["mean_abs_bin_error"]["value"] == pytest.approx(np.abs(y - pred).mean())
    assert (tmp_path / "rep" / "confusion_matrix.png").exists()


@pytest.mark.slow
def test_severity_head_learns_the_phantoms_true_extent_far_better_than_the_mean(tmp_path):
    """The known answer: phantoms drawn with a known geographic and opacity extent (normal ones 0/8).
    Predicting the training mean gives R² <= 0 and no rank correlation on the test split."""
    ds = make_dataset(tmp_path, n=240, size=64, seed=3, severity=True)
    train(
        TrainConfig(
            data=str(ds),
            out=str(tmp_path / "run"),
            task="severity",
            epochs=6,
            batch_size=8,
            lr=3e-4,
            precise_bn=64,
            progress=False,
            device="cpu",
        )
    )
    m = evaluate_checkpoint(
        EvalConfig(str(tmp_path / "run" / "best.pt"), data=str(ds), split="test", resamples=200, device="cpu")
    )
    y = np.array([p["true"] for p in m["predictions"]])
    baseline = r2_score(y, np.broadcast_to(y.mean(0), y.shape) + 0.0, multioutput="raw_values")
    assert (baseline <= 1e-9).all()
    for s in ("geographic", "opacity"):
        assert m[s]["r2"]["value"] > 0.4, m[s]
        assert m[s]["spearman"]["value"] > 0.6, m[s]
        assert m[s]["mae"]["value"] < 1.5, m[s]
        assert m[s]["r2"]["ci95"][0] > 0  # the whole interval above the baseline


# --- bad input ------------------------------------------------------------------------------------------


def test_bad_severity_and_risk_input_is_one_line(sev_ds, sev_ckpt, tmp_path):
    plain = make_dataset(tmp_path / "plain", n=24, size=32)
    r = covidnet("train", "--data", str(plain), "--out", str(tmp_path / "r1"), "--task", "severity", "--device", "cpu")
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert "--severity FILE" in r.stderr and not (tmp_path / "r1").exists()
    r = covidnet(
        "train", "--data", str(sev_ds), "--out", str(tmp_path / "r2"), "--task", "severity", "--freeze-backbone"
    )
    assert r.returncode == 1 and "--freeze-backbone needs" in r.stderr and "Traceback" not in r.stderr
    r = covidnet("train", "--data", str(sev_ds), "--out", str(tmp_path / "r3"), "--task", "risk", "--risk-bins", "5,3")
    assert r.returncode == 1 and "--risk-bins '5,3'" in r.stderr and "Traceback" not in r.stderr
    r = covidnet("train", "--data", str(sev_ds), "--out", str(tmp_path / "r4"), "--task", "grading")
    assert r.returncode == 1 and "--task must be one of classification, severity, risk" in r.stderr
    r = covidnet("eval", "--checkpoint", str(sev_ckpt), "--labels", "x.txt", "--images", ".")
    assert r.returncode == 2 and "give --data" in r.stderr and "Traceback" not in r.stderr
    r = covidnet("eval", "--checkpoint", str(sev_ckpt), "--data", str(plain))
    assert r.returncode == 1 and "no images with severity scores" in r.stderr and "Traceback" not in r.stderr
    r = covidnet("calibrate", "--checkpoint", str(sev_ckpt), "--data", str(sev_ds), "--temperature")
    assert r.returncode == 1 and "a severity model, but this takes classification models" in r.stderr
    assert "Traceback" not in r.stderr
    r = covidnet("predict", "--checkpoint", str(sev_ckpt), ".", "--threshold", "COVID-19=0.2")
    assert r.returncode == 2 and "classification checkpoints" in r.stderr
