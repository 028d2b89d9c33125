"""`covidnet lungs train|eval|predict` and `data build --lungs` on phantoms, whose true lungs the generator
drew: a short CPU training beats a fixed box by far, runs resume to the same weights, checkpoints describe
themselves, eval's figures are the metrics module's, predicted masks land on their files' pixels."""

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from lungphantoms import FAST, SIZE, phantom_build
from PIL import Image
from test_cli import covidnet

from covidnet.audit import LUNG_BOX
from covidnet.checkpoint import read_checkpoint
from covidnet.data.build import BuildConfig, SourceSpec, build_dataset
from covidnet.data.lungmasks import MaskSpec
from covidnet.data.store import open_store
from covidnet.data.synth import MASKS_DIR
from covidnet.errors import ConfigError, CovidnetError, UsageError
from covidnet.lungs.evaluate import LungsEvalConfig, LungsPredictConfig, evaluate_lungs, predict_lungs
from covidnet.metrics.segmentation import box_mask, dice
from covidnet.runtime import load
from covidnet.train import TrainConfig, train


def test_a_short_cpu_training_beats_a_fixed_box_by_far(trained):
    ds, ckpt = trained
    m = evaluate_lungs(LungsEvalConfig(str(ckpt), str(ds), "test", resamples=100, device="cpu", box=LUNG_BOX))
    box = m["box_baseline"]["lungs"]["dice"]["value"]
    assert m["n"] >= 6 and m["lungs"]["dice"]["value"] >= 0.90 and m["lungs"]["dice"]["value"] > box + 0.2
    assert m["right"]["dice"]["value"] >= 0.85 and m["left"]["dice"]["value"] >= 0.85  # each lung on its own
    assert m["lungs"]["hd95"]["value"] < m["box_baseline"]["lungs"]["hd95"]["value"]


def test_eval_reports_the_metrics_modules_figures_and_writes_a_page(trained, tmp_path):
    ds, ckpt = trained
    m = evaluate_lungs(
        LungsEvalConfig(
            str(ckpt), str(ds), "test", resamples=50, device="cpu", report=str(tmp_path / "rep"), box=LUNG_BOX
        )
    )
    store, lm = open_store(ds), load(ckpt, "cpu")
    rows = store.mask_rows("test")
    truth, pred = store.read_masks(rows) == 255, lm.masks(store, rows) == 255
    per_image = [dice(p, t) for p, t in zip(pred, truth)]  # phantom masks have no ignore pixels
    assert m["lungs"]["dice"]["value"] == pytest.approx(np.mean(per_image))
    assert [i["lungs.dice"] for i in m["images"]] == pytest.approx(per_image)
    assert m["box_baseline"]["lungs"]["dice"]["value"] == pytest.approx(
        np.mean([dice(box_mask(SIZE, LUNG_BOX), t) for t in truth])
    )
    page = (tmp_path / "rep" / "index.html").read_text()
    assert 'id="lung-metrics"' in page and "worst.png" in page and "not for diagnostic use" in page
    assert (tmp_path / "rep" / "worst.png").stat().st_size > 1000
    assert json.loads((tmp_path / "rep" / "metrics.json").read_text())["n"] == m["n"]


def test_checkpoints_describe_themselves(trained):
    ds, ckpt = trained
    c = read_checkpoint(ckpt)
    contract = open_store(ds).contract
    assert c["task"] == "segmentation" and c["arch"] == "lung-unet-tiny" and c["classes"] == ["lung"]
    assert c["preprocess"] == contract.for_model(SIZE, 1, (0.0,), (1.0,)).to_dict()
    assert c["train_config"]["lr"] == 3e-3 and c["val_metrics"]["dice"] == c["best_score"]["value"] > 0.85
    assert c["best_score"]["metric"] == "val_dice" and c["best_score"]["mode"] == "max"
    run = Path(ckpt).parent
    log = list(csv.DictReader(open(run / "log.csv")))
    assert len(log) == 10 and float(log[-1]["train_loss"]) < float(log[0]["train_loss"])
    assert json.loads((run / "run.json").read_text())["state"] == "complete"
    assert json.loads((run / "config.json").read_text())["task"] == "segmentation"


def test_same_seed_same_weights_and_a_killed_run_resumes_to_them(trained, tmp_path):
    ds, _ = trained
    args = ["lungs", "train", "--data", str(ds), "--arch", "lung-unet-tiny", "--epochs", "4", "--batch-size", "4",
            "--lr", "3e-3", "--device", "cpu", "--no-progress"]  # fmt: skip
    assert covidnet(*args, "--out", str(tmp_path / "whole")).returncode == 0
    exe = Path(sys.executable).parent / "covidnet"
    proc = subprocess.Popen([str(exe), *args, "--out", str(tmp_path / "killed")], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (tmp_path / "killed" / "log.csv").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    status = json.loads((tmp_path / "killed" / "run.json").read_text())
    if proc.returncode == 0:  # it finished before the signal came: nothing left to resume
        pytest.skip("the run ended before SIGTERM reached it")
    assert proc.returncode == 143 and "resumable checkpoint" in err and "Traceback" not in err
    assert status["state"] == "interrupted"
    r = covidnet(*args, "--out", str(tmp_path / "killed"), "--resume")
    assert r.returncode == 0, r.stderr
    whole = read_checkpoint(tmp_path / "whole" / "last.pt")["model"]
    resumed = read_checkpoint(tmp_path / "killed" / "last.pt")["model"]
    assert all(torch.allclose(whole[k].float(), resumed[k].float(), atol=1e-5) for k in whole)


def test_streamed_images_and_masks_give_the_weights_of_the_in_memory_run(trained, tmp_path):
    ds, _ = trained
    for name, gb in (("memory", 0.0), ("streamed", 1e-6)):  # 1 kB: nothing fits, every batch is read
        train(TrainConfig(data=str(ds), out=str(tmp_path / name), **{**FAST, "epochs": 2, "host_memory_gb": gb}))
    a = read_checkpoint(tmp_path / "memory" / "last.pt")["model"]
    b = read_checkpoint(tmp_path / "streamed" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_predict_writes_masks_of_each_files_own_size_and_overlays(trained, tmp_path):
    ds, ckpt = trained
    images = sorted((ds.parent / "phantoms" / "images").iterdir())[:3]
    r = covidnet("lungs", "predict", str(ckpt), *map(str, images), "--out", str(tmp_path / "p"), "--overlay",
                 "--device", "cpu", "--json")  # fmt: skip
    assert r.returncode == 0, r.stderr
    results = [json.loads(line) for line in r.stdout.splitlines()]
    assert [x["status"] for x in results] == ["ok"] * 3
    for x, image in zip(results, images):
        mask = np.asarray(Image.open(x["mask"]))
        truth = np.asarray(Image.open(ds.parent / "phantoms" / MASKS_DIR / image.name)) == 255
        assert mask.shape == truth.shape == (2 * SIZE, 2 * SIZE) and set(np.unique(mask)) <= {0, 255}
        assert dice(mask == 255, truth) > 0.85  # at the file's resolution, on the file's pixels
        assert x["mask"].endswith(".lungs.png") and np.asarray(Image.open(x["overlay"])).shape == (*mask.shape, 3)
    missing = list(
        predict_lungs(LungsPredictConfig(str(ckpt), [str(tmp_path / "nowhere.png")], str(tmp_path / "q"), device="cpu"))
    )
    assert missing[0]["status"] == "failed" and "no such file" in missing[0]["error"]


def test_build_with_lungs_predicts_the_masks_it_has_not_got(trained, tmp_path):
    ds, ckpt = trained
    src = ds.parent / "phantoms"
    report = build_dataset(
        BuildConfig(
            sources=[SourceSpec("cohen", src, "cohen")],
            out=tmp_path / "ds",
            size=SIZE,
            workers=1,
            progress=False,
            lungs=ckpt,
        ),  # fmt: skip
        segmenter=load(ckpt),
    )
    store = open_store(tmp_path / "ds")
    assert {r["lung_mask"] for r in store.index} == {"predicted"} and len(store.mask_rows()) == 0
    assert report["lung_masks"]["predicted"]["images"] == len(store.index) == len(store.mask_rows(predicted=True))
    truth = np.stack([np.asarray(Image.open(src / MASKS_DIR / r["filename"])) for r in store.index])
    truth = np.stack([store.contract.mask(t) for t in truth]) == 255
    predicted = store.read_masks(store.rows()) == 255
    assert np.mean([dice(p, t) for p, t in zip(predicted, truth)]) > 0.88


def test_build_with_lungs_keeps_the_annotated_masks(trained, tmp_path):
    ds, ckpt = trained
    src = ds.parent / "phantoms"
    folder = tmp_path / "some"
    folder.mkdir()
    for p in sorted((src / MASKS_DIR).iterdir())[:10]:
        (folder / p.name).write_bytes(p.read_bytes())
    build_dataset(
        BuildConfig(
            sources=[SourceSpec("cohen", src, "cohen")],
            out=tmp_path / "ds",
            size=SIZE,
            workers=1,
            progress=False,
            lung_masks=[MaskSpec("phantom", folder)],
            lungs=ckpt,
        ),  # fmt: skip
        segmenter=load(ckpt),
    )
    store = open_store(tmp_path / "ds")
    kinds = [r["lung_mask"] for r in store.index]
    assert kinds.count("phantom") == 10 and kinds.count("predicted") == len(kinds) - 10
    annotated = store.mask_rows()
    for row in annotated:  # an annotated mask is stored as it came, never overwritten by a prediction
        name = store.index[row]["filename"]
        expected = store.contract.mask(np.asarray(Image.open(folder / name)))
        assert np.array_equal(store.read_masks([row])[0], expected)


def test_wrong_inputs_are_one_line_errors(trained, tmp_path):
    ds, ckpt = trained
    bare = phantom_build(tmp_path, n=12, masks=False)
    with pytest.raises(CovidnetError, match="--lung-masks NAME=DIR"):
        train(TrainConfig(data=str(bare), out=str(tmp_path / "r"), **FAST))
    with pytest.raises(ConfigError, match="is a classifier"):
        train(TrainConfig(data=str(ds), out=str(tmp_path / "r"), **{**FAST, "arch": "covidnet-cxr3b"}))
    with pytest.raises(CovidnetError, match="no test image has an annotated lung mask"):
        evaluate_lungs(LungsEvalConfig(str(ckpt), str(bare), "test", device="cpu"))
    r = covidnet("eval", "--checkpoint", str(ckpt), "--data", str(ds))
    assert r.returncode == 1 and "covidnet lungs eval" in r.stderr and "Traceback" not in r.stderr
    small = tmp_path / "other"
    other = phantom_build(small, n=12, top_crop=0.2)
    with pytest.raises(CovidnetError, match="top_crop"):
        evaluate_lungs(LungsEvalConfig(str(ckpt), str(other), "train", device="cpu"))
    with pytest.raises(CovidnetError, match="--top-crop 0.08"):
        build_dataset(BuildConfig(sources=[SourceSpec("cohen", small / "phantoms", "cohen")], out=tmp_path / "x",
                                  size=SIZE, top_crop=0.2, workers=1, progress=False, lungs=ckpt),
                      segmenter=load(ckpt))  # fmt: skip
    assert not (tmp_path / "x").exists()


@pytest.fixture(scope="module")
def lungs_onnx(trained, tmp_path_factory):
    """The trained segmenter exported by `covidnet export` (parity on the build's validation images)."""
    ds, ckpt = trained
    out = tmp_path_factory.mktemp("lungs_onnx") / "lungs.onnx"
    r = covidnet("export", "--checkpoint", str(ckpt), "--out", str(out), "--data", str(ds), "--json", f"{out}.json")
    assert r.returncode == 0, r.stderr
    return out, json.loads(Path(f"{out}.json").read_text())


def test_lung_export_matches_pytorch_at_the_stored_side_and_any_other(trained, lungs_onnx):
    ds, ckpt = trained
    path, report = lungs_onnx
    assert report["task"] == "segmentation" and report["fp32"]["max_abs_prob_diff"] <= 1e-4
    assert report["fp32"]["mask_pixel_agreement"] >= 0.999 and "validation images" in report["parity_inputs"]
    onnx, torch_model = load(path), load(ckpt, "cpu")
    assert onnx.contract == torch_model.contract and onnx.arch == torch_model.arch == "lung-unet-tiny"
    store = open_store(ds)
    images = store.read(store.rows()[:6])
    larger = np.stack([np.asarray(Image.fromarray(i).resize((150, 150), Image.Resampling.BILINEAR)) for i in images])
    for x in (images, larger):  # the graph's side is dynamic: a build of another stored size segments alike
        assert np.abs(onnx.probabilities(x) - torch_model.probabilities(x)).max() <= 1e-4
        assert onnx.masks(x).shape == x.shape


def test_lungs_eval_of_the_export_gives_the_checkpoints_figures(trained, lungs_onnx):
    ds, ckpt = trained
    a = evaluate_lungs(LungsEvalConfig(str(ckpt), str(ds), "test", resamples=20, device="cpu"))
    b = evaluate_lungs(LungsEvalConfig(str(lungs_onnx[0]), str(ds), "test", resamples=20, device="cpu"))
    assert b["arch"] == a["arch"] and b["lungs"]["dice"]["value"] == pytest.approx(
        a["lungs"]["dice"]["value"], abs=1e-3
    )


def test_build_with_an_onnx_segmenter_needs_no_torch_and_stores_the_checkpoints_masks(trained, lungs_onnx, tmp_path):
    ds, ckpt = trained
    src = ds.parent / "phantoms"
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['torchvision'] = None; "
        "from covidnet.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    args = ["data", "build", "--source", f"cohen={src}", "--size", str(SIZE), "--workers", "1", "--quiet"]
    r = subprocess.run(
        [sys.executable, "-c", code, *args, "--lungs", str(lungs_onnx[0]), "--out", str(tmp_path / "onnx")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "onnx" / "report.json").read_text())
    assert report["lung_masks"]["predicted"]["runtime"] == "onnx"
    assert report["lung_masks"]["predicted"]["model"].startswith("lung-unet-tiny-onnx@")
    build_dataset(BuildConfig(sources=[SourceSpec("cohen", src, "cohen")], out=tmp_path / "pt", size=SIZE,
                              workers=1, progress=False, lungs=ckpt), segmenter=load(ckpt))  # fmt: skip
    a, b = open_store(tmp_path / "onnx"), open_store(tmp_path / "pt")
    assert len(a.index) == len(b.index) == len(a.mask_rows(predicted=True)) > 0
    agree = (a.read_masks(a.rows()) == b.read_masks(b.rows())).mean()
    assert agree >= 0.9999  # the same masks, up to float rounding at the threshold


def test_wrong_models_for_lungs_are_one_line_errors(trained, lungs_onnx, tmp_path):
    ds, ckpt = trained
    from covidnet.export import _write_meta  # a lung export relabelled as a classifier

    relabelled = tmp_path / "classifier.onnx"
    relabelled.write_bytes(lungs_onnx[0].read_bytes())
    meta = {**load(lungs_onnx[0]).meta, "task": "classification", "classes": ["normal", "COVID-19"]}
    _write_meta(relabelled, meta)
    with pytest.raises(ConfigError, match="a classification model, but this takes segmentation models"):
        load(relabelled, tasks=("segmentation",))
    src = ds.parent / "phantoms"
    wrong = (relabelled, "a classification model, but this takes segmentation models")
    for model, message in (wrong, (tmp_path / "none.onnx", "not found")):
        r = covidnet("data", "build", "--source", f"cohen={src}", "--out", str(tmp_path / "b"), "--lungs", str(model))
        assert r.returncode == 1 and message in r.stderr and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "b" / "report.json").exists()
    r = covidnet("export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "q.onnx"), "--int8", "--data", str(ds))
    assert r.returncode == 1 and "--int8 is for classifiers" in r.stderr and not (tmp_path / "q.onnx").exists()
    for model in ("--onnx", str(lungs_onnx[0])), ("--checkpoint", str(ckpt)):
        r = covidnet("predict", *model, str(next((src / "images").glob("*.png"))))
        assert r.returncode == 1 and "covidnet lungs predict" in r.stderr and "Traceback" not in r.stderr
    with pytest.raises(UsageError, match="a lung segmenter; its masks come from covidnet lungs predict"):
        load(ckpt).predict(open_store(ds).read(np.arange(2)))


@pytest.mark.slow
def test_phantom_known_answer_dice_at_least_097(tmp_path):
    """The issue's target on phantoms: Dice >= 0.97 on held-out patients after a CPU training of a minute or
    two (96 phantoms at 64 px, lung-unet-tiny, 30 epochs)."""
    ds = phantom_build(tmp_path, n=96, seed=1)
    train(TrainConfig(data=str(ds), out=str(tmp_path / "run"), **{**FAST, "epochs": 30}))
    m = evaluate_lungs(
        LungsEvalConfig(str(tmp_path / "run" / "best.pt"), str(ds), "test", resamples=200, device="cpu", box=LUNG_BOX)
    )
    assert m["lungs"]["dice"]["value"] >= 0.97, m["lungs"]["dice"]
