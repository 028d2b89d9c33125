"""`covidnet train` on phantom data: learning, kill-and-resume, torchrun, bad input."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from phantomdata import make_dataset
from test_cli import covidnet

from covidnet.checkpoint import read_checkpoint
from covidnet.errors import ConfigError, CovidnetError
from covidnet.runtime import load
from covidnet.train import TrainConfig, train

FAST = dict(epochs=2, batch_size=8, lr=3e-4, progress=False, precise_bn=64)


@pytest.fixture(scope="module")
def small_ds(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("small"), n=48, size=32)


def read_log(run: Path) -> list[dict]:
    return list(csv.DictReader(open(run / "log.csv")))


def weights(path: Path) -> dict:
    return read_checkpoint(path)["model"]


@pytest.mark.slow
def test_a_few_epochs_on_phantoms_beat_chance_on_validation(tmp_path):
    ds = make_dataset(tmp_path, n=240, size=64, seed=3)
    summary = train(
        TrainConfig(data=str(ds), out=str(tmp_path / "run"), epochs=8, batch_size=8, lr=3e-4, progress=False)
    )
    best = read_checkpoint(tmp_path / "run" / "best.pt")
    assert best["val_metrics"]["accuracy"] >= 0.6  # chance is 1/3
    log = read_log(tmp_path / "run")
    assert len(log) == 8 and float(log[-1]["train_loss"]) < float(log[0]["train_loss"])
    assert (
        abs(float(log[0]["mix_COVID-19"]) - 2 / 8) < 0.03
    )  # --covid-percent 0.3 of batch 8: 2 per batch, stated per epoch
    assert json.loads((tmp_path / "run" / "run.json").read_text())["state"] == "complete"
    lm = load(tmp_path / "run" / "best.pt", "cpu")  # self-describing: no flags needed
    model, meta = lm.model, lm.meta
    assert meta["classes"] == ["normal", "pneumonia", "COVID-19"] and meta["preprocess"]["size"] == 64
    assert model(torch.zeros(1, 1, 64, 64)).shape == (1, 3)
    assert summary["images_per_s"] > 0


def test_run_folder_holds_config_log_and_checkpoints(small_ds, tmp_path):
    run = tmp_path / "run"
    train(TrainConfig(data=str(small_ds), out=str(run), **FAST))
    assert {"config.json", "log.csv", "last.pt", "best.pt", "run.json"} <= {p.name for p in run.iterdir()}
    assert json.loads((run / "config.json").read_text())["lr"] == 3e-4
    log = read_log(run)
    assert [r["epoch"] for r in log] == ["1", "2"]
    assert {"val_sens_COVID-19", "val_ppv_normal", "mix_pneumonia", "images_per_s"} <= set(log[0])


def test_same_seed_same_weights(small_ds, tmp_path):
    for name in ("a", "b"):
        train(TrainConfig(data=str(small_ds), out=str(tmp_path / name), **FAST))
    wa, wb = weights(tmp_path / "a" / "last.pt"), weights(tmp_path / "b" / "last.pt")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_killed_run_resumes_to_the_same_weights(small_ds, tmp_path):
    args = [
        "train",
        "--data",
        str(small_ds),
        "--epochs",
        "4",
        "--batch-size",
        "4",
        "--lr",
        "3e-4",
        "--precise-bn",
        "64",
        "--no-progress",
    ]
    assert covidnet(*args, "--out", str(tmp_path / "whole")).returncode == 0
    exe = Path(sys.executable).parent / "covidnet"
    proc = subprocess.Popen([str(exe), *args, "--out", str(tmp_path / "killed")], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (tmp_path / "killed" / "log.csv").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "resumable checkpoint" in err and "Traceback" not in err
    status = json.loads((tmp_path / "killed" / "run.json").read_text())
    assert status["state"] == "interrupted" and status["epoch"] < 4
    r = covidnet(*args, "--out", str(tmp_path / "killed"), "--resume")
    assert r.returncode == 0, r.stderr
    whole, resumed = weights(tmp_path / "whole" / "last.pt"), weights(tmp_path / "killed" / "last.pt")
    for k in whole:
        assert torch.allclose(whole[k].float(), resumed[k].float(), atol=1e-5), k
    assert [r["train_loss"] for r in read_log(tmp_path / "whole")] == [
        r["train_loss"] for r in read_log(tmp_path / "killed")
    ]


@pytest.mark.slow
def test_two_process_gloo_run_agrees_with_single_process(small_ds, tmp_path):
    common = [
        "--data",
        str(small_ds),
        "--epochs",
        "3",
        "--batch-size",
        "8",
        "--lr",
        "3e-4",
        "--covid-percent",
        "0",
        "--precise-bn",
        "64",
        "--no-progress",
    ]
    single = covidnet("train", *common, "--out", str(tmp_path / "single"))
    assert single.returncode == 0, single.stderr
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ddp = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "covidnet",
            "train",
            *common,
            "--out",
            str(tmp_path / "ddp"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    n_train = sum(1 for _ in open(small_ds / "train.txt"))
    one, two = read_log(tmp_path / "single"), read_log(tmp_path / "ddp")
    for a, b in zip(one, two):
        assert (
            int(b["images_seen"]) == int(b["unique_images"]) == n_train
        )  # every image once per epoch, over both ranks
        # the same global batches and steps; BatchNorm sees half a batch per rank, hence the tolerance
        assert float(b["train_loss"]) == pytest.approx(float(a["train_loss"]), rel=0.15)
        assert float(b["val_loss"]) == pytest.approx(float(a["val_loss"]), rel=0.15)
    assert not any((tmp_path / "ddp").glob("*rank*"))  # rank 0 alone writes


# --- bad input ----------------------------------------------------------------------------------------


def test_not_a_built_dataset_is_one_line(tmp_path):
    (tmp_path / "nope").mkdir()
    r = covidnet("train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "run"))
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1 and "covidnet data build" in r.stderr


@pytest.mark.parametrize(
    "override, needle",
    [
        ({"covid_percent": 1.0}, "--covid-percent"),
        ({"covid_percent": -0.1}, "--covid-percent"),
        ({"batch_size": 10_000}, "larger than the training split"),
        ({"class_weights": "1,2"}, "--class-weights"),
        ({"arch": "nosuchnet"}, "unknown architecture"),
        ({"init": "imagenet"}, "torchvision baselines"),
        ({"init": "mean-var"}, "--init mean-var needs ImageNet weights"),
        ({"init": "imagnet"}, "neither random, imagenet, mean-var nor a checkpoint file"),
        ({"optimizer": "adamw"}, "--optimizer must be one of adam, sgd"),
    ],
)
def test_bad_options_are_refused_before_anything_is_written(small_ds, tmp_path, override, needle):
    with pytest.raises(CovidnetError, match=needle):
        train(TrainConfig(data=str(small_ds), out=str(tmp_path / "run"), **{**FAST, **override}))
    assert not (tmp_path / "run" / "last.pt").exists()


def test_sgd_keeps_its_momentum_across_a_resume_and_a_resume_cannot_switch_optimiser(small_ds, tmp_path):
    run = tmp_path / "sgd"
    settings = {**FAST, "epochs": 1, "optimizer": "sgd", "lr": 1e-2, "weight_decay": 1e-4}
    train(TrainConfig(data=str(small_ds), out=str(run), **settings))
    state = read_checkpoint(run / "last.pt")["optimizer"]
    assert state["param_groups"][0]["momentum"] == 0.9 and state["param_groups"][0]["weight_decay"] == 1e-4
    assert all("momentum_buffer" in s for s in state["state"].values())  # SGD's, not Adam's exp_avg
    with pytest.raises(ConfigError, match="--optimizer was 'sgd'"):
        train(
            TrainConfig(data=str(small_ds), out=str(run), **{**settings, "epochs": 2, "optimizer": "adam"}, resume=True)
        )
    train(TrainConfig(data=str(small_ds), out=str(run), **{**settings, "epochs": 2}, resume=True))
    assert [r["epoch"] for r in read_log(run)] == ["1", "2"]


def test_init_from_a_checkpoint_of_another_architecture_is_refused(small_ds, tmp_path):
    train(TrainConfig(data=str(small_ds), out=str(tmp_path / "a"), **{**FAST, "epochs": 1}))
    with pytest.raises(ConfigError, match="a checkpoint of covidnet-cxr3b"):
        train(
            TrainConfig(
                data=str(small_ds),
                out=str(tmp_path / "b"),
                arch="mobilenet_v3_large",
                init=str(tmp_path / "a" / "best.pt"),
                **{**FAST, "epochs": 1},
            )
        )


def test_init_from_a_checkpoint_keeps_the_trunk_and_resets_the_head(small_ds, tmp_path):
    train(TrainConfig(data=str(small_ds), out=str(tmp_path / "a"), **{**FAST, "epochs": 1}))
    train(
        TrainConfig(
            data=str(small_ds),
            out=str(tmp_path / "b"),
            init=str(tmp_path / "a" / "best.pt"),
            binary=True,
            **{**FAST, "epochs": 1, "lr": 1e-12},
        )
    )
    a, b = weights(tmp_path / "a" / "best.pt"), weights(tmp_path / "b" / "last.pt")
    assert b["classifier.weight"].shape == (2, a["classifier.weight"].shape[1])
    assert torch.allclose(a["stem.0.0.weight"], b["stem.0.0.weight"], atol=1e-6)


def lite0_imagenet() -> dict:
    """Google's ImageNet weights of efficientnet-lite0, for one channel; skips the test without the extra."""
    from covidnet.models.efficientnet import imagenet_state_dict

    try:
        return imagenet_state_dict(in_channels=1)
    except CovidnetError as e:
        pytest.skip(str(e))


def test_init_imagenet_trains_efficientnet_lite0_offline_from_the_packages_weights(small_ds, tmp_path):
    ref = lite0_imagenet()
    cfg = dict(arch="efficientnet-lite0", init="imagenet", **{**FAST, "epochs": 1, "lr": 1e-12})
    train(TrainConfig(data=str(small_ds), out=str(tmp_path / "run"), **cfg))
    ckpt = read_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["train_config"]["init"] == "imagenet" and "weights" not in ckpt["arch_args"]
    for k in ("stem.conv.weight", "blocks.7.depthwise.conv.weight", "conv_head.bn.weight"):
        assert torch.allclose(ckpt["model"][k], ref[k], atol=1e-6), k
    assert ckpt["model"]["classifier.weight"].shape == (3, 1280)  # a new head for the task's classes
    assert load(tmp_path / "run" / "last.pt", "cpu").model(torch.zeros(1, 1, 32, 32)).shape == (1, 3)


def test_init_mean_var_trains_from_weights_uncorrelated_with_imagenets_that_depend_on_the_seed(small_ds, tmp_path):
    ref = lite0_imagenet()
    cfg = dict(arch="efficientnet-lite0", init="mean-var", **{**FAST, "epochs": 1, "lr": 1e-12})
    for seed in (0, 1):
        train(TrainConfig(data=str(small_ds), out=str(tmp_path / f"s{seed}"), seed=seed, **cfg))
    a, b = (read_checkpoint(tmp_path / f"s{seed}" / "last.pt") for seed in (0, 1))
    assert a["train_config"]["init"] == "mean-var"
    k = "blocks.12.expand.conv.weight"  # 1152 x 192 weights
    w, p = a["model"][k].flatten(), ref[k].flatten()
    assert abs(float(torch.corrcoef(torch.stack([w, p]))[0, 1])) < 0.02
    assert float(w.mean()) == pytest.approx(float(p.mean()), abs=3 * float(p.std()) / len(p) ** 0.5)
    assert float(w.std()) == pytest.approx(float(p.std()), rel=0.01)
    assert not torch.allclose(a["model"][k], b["model"][k])


def test_init_imagenet_without_the_extra_is_one_line_before_anything_is_written(small_ds, tmp_path, monkeypatch):
    from covidnet.models import efficientnet

    monkeypatch.setattr(efficientnet, "WEIGHTS_PACKAGE", "no_such_package_for_covidnet_tests")
    for init in ("imagenet", "mean-var"):
        with pytest.raises(CovidnetError) as e:
            train(
                TrainConfig(data=str(small_ds), out=str(tmp_path / init), arch="efficientnet-lite0", init=init, **FAST)
            )
        assert "pip install 'covidnet[pretrained]'" in str(e.value) and "\n" not in str(e.value)
        assert not (tmp_path / init).exists()


def test_existing_run_needs_resume_and_resume_needs_the_same_settings(small_ds, tmp_path):
    run = str(tmp_path / "run")
    train(TrainConfig(data=str(small_ds), out=run, **{**FAST, "epochs": 1}))
    with pytest.raises(ConfigError, match="--resume"):
        train(TrainConfig(data=str(small_ds), out=run, **FAST))
    with pytest.raises(ConfigError, match="--arch"):
        train(TrainConfig(data=str(small_ds), out=run, arch="resnet50", resume=True, **FAST))
    summary = train(TrainConfig(data=str(small_ds), out=run, resume=True, **FAST))  # extends to 2 epochs
    assert len(read_log(tmp_path / "run")) == 2 and summary["epochs"] == 2


def test_imagenet_init_without_cached_weights_says_which_file_to_place_where(small_ds, tmp_path):
    env_home = tmp_path / "torch_home"  # an empty cache: offline, the weights cannot be had
    r = subprocess.run(
        [
            str(Path(sys.executable).parent / "covidnet"),
            "train",
            "--data",
            str(small_ds),
            "--out",
            str(tmp_path / "run"),
            "--arch",
            "mobilenet_v3_large",
            "--init",
            "imagenet",
            "--epochs",
            "1",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TORCH_HOME": str(env_home)},
    )
    if r.returncode == 0:  # a machine with internet access downloaded them: the run must then be complete
        assert json.loads((tmp_path / "run" / "run.json").read_text())["state"] == "complete"
        return
    assert r.returncode == 1 and r.stdout == "" and len(r.stderr.strip().splitlines()) == 1
    assert "download https://" in r.stderr and str(env_home) in r.stderr
    assert not (tmp_path / "run").exists()  # nothing written before the model exists


def test_a_run_that_failed_before_its_first_checkpoint_can_be_started_again(small_ds, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    train(TrainConfig(data=str(small_ds), out=str(run), **{**FAST, "epochs": 1}))
    assert (run / "last.pt").exists()
