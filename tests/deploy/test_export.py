"""`covidnet export` and `covidnet predict --onnx`: parity with PyTorch, the contract in the metadata, int8,
and running without PyTorch."""

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import numpy as np
import onnx
import pytest
from test_cli import covidnet as run_cli

import covidnet
from covidnet.checkpoint import read_checkpoint
from covidnet.data.store import open_store
from covidnet.errors import CovidnetError
from covidnet.export import ExportConfig, export_model
from covidnet.predict import PredictConfig, predict_paths
from covidnet.runtime import load
from covidnet.tasks import softmax


def phantom_files(root: Path, k: int = 6) -> list[str]:
    return [str(p) for p in sorted((root / "phantoms" / "images").glob("*.png"))[:k]]


def test_fp32_export_matches_pytorch_on_validation_images_with_a_dynamic_batch(trained, exported):
    root, ds, ckpt = trained
    fp32, _ = exported
    assert fp32["fp32"]["max_abs_prob_diff"] <= 1e-4 and "validation images" in fp32["parity_inputs"]
    # checked again here, independently of the exporter: torch backend vs ONNX Runtime at batch 1, 3 and 7
    store = open_store(ds)
    x = np.asarray(store.images[store.rows("test")[:7]])
    ref = softmax(load(ckpt, "cpu").logits(x))
    onnx_model = load(fp32["path"], "cpu")
    for b in (1, 3, 7):
        assert np.abs(softmax(onnx_model.logits(x[:b])) - ref[:b]).max() <= 1e-4


def test_onnx_metadata_carries_the_checkpoints_contract(trained, exported):
    _, _, ckpt = trained
    fp32, _ = exported
    model = onnx.load(fp32["path"])
    meta = json.loads({p.key: p.value for p in model.metadata_props}["covidnet"])
    c = read_checkpoint(ckpt)
    assert meta["format"] == "covidnet-onnx/1"
    assert meta["classes"] == c["classes"] and meta["preprocess"] == c["preprocess"] and meta["arch"] == c["arch"]
    assert meta["int8"] is False
    (inp,) = model.graph.input
    dims = inp.type.tensor_type.shape.dim
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8  # the stored pixels: normalisation is in the graph
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [1, 48, 48]


def test_efficientnet_lite0_exports_with_its_tensorflow_padding_and_matches_pytorch(tmp_path):
    from phantomdata import make_dataset

    from covidnet.train import TrainConfig, train

    ds = make_dataset(tmp_path, n=48, size=48, seed=11)
    run = tmp_path / "run"
    train(TrainConfig(data=str(ds), out=str(run), arch="efficientnet-lite0", epochs=1, lr=3e-4, progress=False))
    out = export_model(ExportConfig(str(run / "best.pt"), str(tmp_path / "lite0.onnx"), data=str(ds), quiet=True))
    assert out["fp32"]["max_abs_prob_diff"] <= 1e-4
    x = np.asarray(open_store(ds).images[:5])
    assert (
        np.abs(softmax(load(out["path"], "cpu").logits(x)) - softmax(load(run / "best.pt", "cpu").logits(x))).max()
        <= 1e-4
    )


def test_int8_export_reports_its_validation_accuracy_change_and_keeps_the_fp32_model(trained, exported):
    root, ds, _ = trained
    _, int8 = exported
    q = int8["int8"]
    store = open_store(ds)
    val = store.rows("val")
    y = store.labels(val)
    x = np.asarray(store.images[val])
    acc = lambda path: float((load(path, "cpu").logits(x).argmax(1) == y).mean())
    assert q["val_images"] == len(val)
    assert q["val_accuracy_int8"] == pytest.approx(acc(int8["path"]))
    assert q["val_accuracy_fp32"] == pytest.approx(acc(int8["fp32_path"]))
    assert q["val_accuracy_change"] == pytest.approx(q["val_accuracy_int8"] - q["val_accuracy_fp32"])
    assert Path(int8["fp32_path"]).is_file() and load(int8["path"], "cpu").meta["int8"] is True
    # int8 really is int8: quantised weights, a quarter of the size
    assert Path(int8["path"]).stat().st_size < 0.4 * Path(int8["fp32_path"]).stat().st_size
    assert q["max_abs_prob_diff"] < 0.2


def test_predict_onnx_gives_the_checkpoints_predictions(trained, exported):
    root, _, ckpt = trained
    fp32, _ = exported
    files = phantom_files(root)
    a = list(predict_paths(PredictConfig(files, checkpoint=str(ckpt), device="cpu", threshold="COVID-19=0.3")))
    b = list(predict_paths(PredictConfig(files, onnx=fp32["path"], device="cpu", threshold="COVID-19=0.3")))
    assert [r["label"] for r in a] == [r["label"] for r in b] and all(r["status"] == "ok" for r in b)
    for ra, rb in zip(a, b):
        assert max(abs(ra["probabilities"][c] - rb["probabilities"][c]) for c in ra["probabilities"]) <= 1e-4
        assert ra["triage"]["flag"] == rb["triage"]["flag"]


def test_predict_onnx_never_imports_torch(trained, exported):
    """The CLI with torch made unimportable in its process: predict --onnx still works."""
    root, _, _ = trained
    fp32, _ = exported
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['torchvision'] = None; "
        "from covidnet.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, "predict", "--onnx", fp32["path"], "--json", *phantom_files(root, 3)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(rows) == 3 and all(row["status"] == "ok" for row in rows)


@pytest.mark.slow
def test_pip_install_onnx_extra_runs_predict_without_torch(trained, exported, tmp_path):
    """A fresh virtual environment, `pip install 'covidnet[onnx]'` from this source tree: no torch in it,
    and `covidnet predict --onnx` gives the same answer as in the full environment."""
    root, _, _ = trained
    fp32, _ = exported
    repo = Path(covidnet.__file__).resolve().parents[2]
    env_dir = tmp_path / "edge"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    pip = subprocess.run(
        [str(py), "-m", "pip", "install", "-q", f"{repo}[onnx]"],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    assert pip.returncode == 0, pip.stderr[-2000:]
    assert subprocess.run([str(py), "-c", "import torch"], capture_output=True).returncode != 0, "torch got installed"
    files = phantom_files(root, 4)
    r = subprocess.run(
        [str(env_dir / "bin" / "covidnet"), "predict", "--onnx", fp32["path"], "--json", *files],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    edge = [json.loads(line) for line in r.stdout.splitlines()]
    here = list(predict_paths(PredictConfig(files, onnx=fp32["path"], device="cpu")))
    assert len(edge) == len(here) == 4
    for e, h in zip(edge, here):
        assert e["label"] == h["label"] and e["probabilities"] == pytest.approx(h["probabilities"], abs=1e-6)
    # and a command that needs torch says which extra to install, in one line
    r = subprocess.run(
        [str(env_dir / "bin" / "covidnet"), "predict", "--checkpoint", "x.pt", *files],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 1 and "pip install 'covidnet[torch]'" in r.stderr and "Traceback" not in r.stderr


def test_a_failed_parity_check_writes_nothing(trained, tmp_path, monkeypatch):
    _, ds, ckpt = trained
    monkeypatch.setattr("covidnet.export.PARITY_TOLERANCE", -1.0)  # nothing can pass
    with pytest.raises(CovidnetError, match="differ from PyTorch"):
        export_model(ExportConfig(str(ckpt), str(tmp_path / "m.onnx"), data=str(ds), quiet=True))
    assert list(tmp_path.iterdir()) == []


def test_export_without_data_checks_parity_on_phantoms(trained, tmp_path):
    _, _, ckpt = trained
    r = export_model(ExportConfig(str(ckpt), str(tmp_path / "m.onnx"), quiet=True))
    assert "phantom" in r["parity_inputs"] and r["fp32"]["max_abs_prob_diff"] <= 1e-4


@pytest.mark.parametrize(
    "args, message",
    [
        (["export", "--checkpoint", "{ckpt}", "--out", "{tmp}/no/such/dir/m.onnx"], "folder not found"),
        (["export", "--checkpoint", "{ckpt}", "--out", "{tmp}/m.onnx", "--int8"], "--int8 needs --data"),
        (["export", "--checkpoint", "{tmp}/missing.pt", "--out", "{tmp}/m.onnx"], "checkpoint not found"),
        (["predict", "--onnx", "{ckpt}", "{img}"], "not a loadable ONNX model"),
        (["predict", "--onnx", "{onnx}", "--cam", "{tmp}/cams", "{img}"], "use the PyTorch checkpoint"),
    ],
)
def test_bad_export_and_onnx_input_is_one_line_and_non_zero(trained, exported, tmp_path, args, message):
    root, _, ckpt = trained
    fmt = dict(ckpt=ckpt, tmp=tmp_path, img=phantom_files(root, 1)[0], onnx=exported[0]["path"])
    r = run_cli(*[a.format(**fmt) for a in args])
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and message in r.stderr
    assert not (tmp_path / "m.onnx").exists()
