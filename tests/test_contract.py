"""The preprocessing contract travels from the build to every consumer: a dataset built with a top crop
other than the reference's gives a model that predict (raw files), eval (stored images) and the ONNX
export all feed exactly as it was trained."""

import csv
from pathlib import Path

import numpy as np
import pytest
from phantomdata import make_dataset

from covidnet.checkpoint import read_checkpoint, save_checkpoint
from covidnet.contract import CONTRACT_FILE, Contract
from covidnet.data.store import open_store
from covidnet.errors import CovidnetError
from covidnet.evaluate import EvalConfig, evaluate_checkpoint, predict_store
from covidnet.predict import PredictConfig, predict_paths
from covidnet.runtime import load
from covidnet.tasks import softmax
from covidnet.train import TrainConfig, train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cropped(tmp_path_factory):
    """A store built with --top-crop 0.15 --size 96 and a model trained on it for one epoch."""
    root = tmp_path_factory.mktemp("crop")
    ds = make_dataset(root, n=40, size=96, top_crop=0.15)
    train(
        TrainConfig(
            data=str(ds),
            out=str(root / "run"),
            epochs=1,
            batch_size=8,
            lr=3e-4,
            progress=False,
            precise_bn=16,
            device="cpu",
            compile="off",
        )
    )
    return ds, root / "run" / "best.pt"


def raw_files(ds: Path, rows, store) -> list[Path]:
    """The source files of stored rows (records.csv keeps every record's path)."""
    with open(ds / "records.csv", newline="") as f:
        by_name = {Path(r["path"]).name: Path(r["path"]) for r in csv.DictReader(f)}
    return [by_name[store.index[i]["filename"]] for i in rows]


def test_top_crop_travels_from_the_build_to_predict_eval_and_export(cropped, tmp_path):
    ds, ckpt = cropped
    store = open_store(ds)
    assert Contract.read(ds) == Contract(stored_size=96, top_crop=0.15) and (ds / CONTRACT_FILE).is_file()
    pre = read_checkpoint(ckpt)["preprocess"]
    assert pre["top_crop"] == 0.15 and pre["stored_size"] == 96  # from the store, not a literal

    lm = load(ckpt, "cpu")
    stored = predict_store(lm, str(ds), "test")  # what eval computes its metrics from
    files = raw_files(ds, store.rows("test"), store)
    from_files = list(predict_paths(PredictConfig([str(f) for f in files], checkpoint=str(ckpt), device="cpu")))
    assert all(r["status"] == "ok" for r in from_files)
    p_eval = softmax(stored.out, lm.meta.get("temperature"))
    p_raw = np.array([[r["probabilities"][c] for c in lm.classes] for r in from_files])
    np.testing.assert_allclose(p_raw, p_eval, atol=1e-5)

    # the control: the reference's 0.08 would have fed the model other pixels
    assert any(
        not np.array_equal(Contract(stored_size=96).load(f), store.images[i]) for f, i in zip(files, store.rows("test"))
    )

    from covidnet.export import ExportConfig, export_model

    export_model(ExportConfig(checkpoint=str(ckpt), out=str(tmp_path / "m.onnx"), data=str(ds), quiet=True))
    from_onnx = list(predict_paths(PredictConfig([str(f) for f in files], onnx=str(tmp_path / "m.onnx"))))
    p_onnx = np.array([[r["probabilities"][c] for c in lm.classes] for r in from_onnx])
    np.testing.assert_allclose(p_onnx, p_eval, atol=1e-4)


def test_a_store_built_with_another_top_crop_is_refused_with_one_clear_line(cropped, tmp_path):
    ds, ckpt = cropped
    other = make_dataset(tmp_path, n=12, size=96, top_crop=0.08)
    with pytest.raises(CovidnetError, match=r"top_crop 0.08.*top_crop 0.15"):
        evaluate_checkpoint(EvalConfig(str(ckpt), data=str(other), split="train", resamples=0, device="cpu"))


def test_a_checkpoint_written_before_the_contract_existed_still_loads(cropped, tmp_path):
    _, ckpt = cropped
    old = read_checkpoint(ckpt)
    old["preprocess"] = {k: v for k, v in old["preprocess"].items() if k != "top_crop"}  # as train.py wrote them
    save_checkpoint(tmp_path / "old.pt", {k: v for k, v in old.items() if k not in ("format", "version")})
    lm = load(tmp_path / "old.pt", "cpu")
    assert lm.contract == Contract(
        stored_size=96,
        top_crop=0.08,
        size=96,
        in_channels=1,
        mean=tuple(old["preprocess"]["mean"]),
        std=tuple(old["preprocess"]["std"]),
    )


def test_a_dataset_built_before_contract_json_reads_its_build_config(cropped, tmp_path):
    ds, _ = cropped
    copy = tmp_path / "old"
    copy.mkdir()
    for name in ("images.npy", "index.csv", "config.json"):
        (copy / name).write_bytes((ds / name).read_bytes())
    assert open_store(copy).contract == Contract(stored_size=96, top_crop=0.15)


def test_contract_round_trips_and_checks_its_values():
    c = Contract(stored_size=128, top_crop=0.1).for_model(112, 3, (0.4, 0.4, 0.4), (0.2, 0.2, 0.2))
    assert Contract.from_dict(c.to_dict()) == c and c.input_size == 112
    with pytest.raises(CovidnetError, match="top_crop"):
        Contract(top_crop=0.7)
