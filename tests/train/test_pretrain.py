"""Self-supervised pretraining (``covidnet pretrain``): SimSiam's and MoCo v2's heads and losses as lightly
writes them, the
training split only (its held-out tenth watched, never val or test), a run that resumes and a checkpoint that
``covidnet train --init`` takes."""

import copy
import csv
import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from phantomdata import make_dataset

from covidnet.checkpoint import read_checkpoint
from covidnet.cli import main
from covidnet.contract import uint8_to_unit
from covidnet.data import films as films_module
from covidnet.data.store import open_store
from covidnet.data.synth import SynthConfig, write_phantom_dataset
from covidnet.errors import ConfigError, CovidnetError, UsageError
from covidnet.runtime import load
from covidnet.tasks import moco, simclr
from covidnet.tasks.selfsup import SelfSupervisedTask, monitored
from covidnet.tasks.simsiam import Heads, PredictionHead, ProjectionHead, simsiam_loss
from covidnet.train import TrainConfig, train


def test_heads_and_loss_match_lightlys_simsiam_weight_for_weight():
    heads = pytest.importorskip("lightly.models.modules.heads")
    from lightly.loss import NegativeCosineSimilarity

    torch.manual_seed(0)
    ours_p, ours_q = ProjectionHead(32, 64, 64), PredictionHead(64, 16)
    theirs_p, theirs_q = heads.SimSiamProjectionHead(32, 64, 64), heads.SimSiamPredictionHead(64, 16, 64)
    for ours, theirs in ((ours_p, theirs_p), (ours_q, theirs_q)):
        mine, other = ours.state_dict(), theirs.state_dict()
        assert [v.shape for v in mine.values()] == [v.shape for v in other.values()]  # the same layers, in order
        theirs.load_state_dict(dict(zip(other, mine.values())))
    x1, x2 = torch.randn(8, 32), torch.randn(8, 32)
    z1, z2 = ours_p(x1), ours_p(x2)
    assert torch.allclose(z1, theirs_p(x1), atol=1e-6) and torch.allclose(ours_q(z1), theirs_q(z1), atol=1e-6)
    criterion = NegativeCosineSimilarity()
    p1, p2 = ours_q(z1), ours_q(z2)
    want = 0.5 * (criterion(p1, z2.detach()) + criterion(p2, z1.detach()))
    assert float(simsiam_loss(p1, p2, z1, z2).detach()) == pytest.approx(float(want.detach()), abs=1e-6)
    assert isinstance(Heads(32).projection, ProjectionHead)


def same_head(ours: torch.nn.Module, theirs: torch.nn.Module, width: int) -> bool:
    """Whether lightly's head, given our head's weights in order (the same layers, shape for shape), computes
    what ours does on a batch of 8 (BatchNorm in training mode)."""
    mine, other = ours.state_dict(), theirs.state_dict()
    assert [v.shape for v in mine.values()] == [v.shape for v in other.values()]
    theirs.load_state_dict(dict(zip(other, mine.values())))
    x = torch.randn(8, width)
    return torch.allclose(ours(x), theirs(x), atol=1e-6)


def test_simclr_head_and_loss_match_lightlys_number_for_number():
    """SimCLR (``--ssl-method simclr``) against lightly: the projection head weight for weight (its BatchNorm in
    training mode), and NT-Xent over the batch as ``NTXentLoss`` computes it, value and gradient."""
    lightly_heads = pytest.importorskip("lightly.models.modules.heads")
    from lightly.loss import NTXentLoss

    torch.manual_seed(0)
    heads = simclr.Heads(32)
    assert same_head(heads.projection, lightly_heads.SimCLRProjectionHead(32, 32, simclr.OUTPUT_DIM), 32)
    z1, z2 = torch.randn(8, simclr.OUTPUT_DIM, requires_grad=True), torch.randn(8, simclr.OUTPUT_DIM)
    ours = simclr.nt_xent(z1, z2)
    (grad,) = torch.autograd.grad(ours, z1)
    want = NTXentLoss(temperature=simclr.TEMPERATURE)(z1, z2)
    (want_grad,) = torch.autograd.grad(want, z1)
    assert float(ours.detach()) == pytest.approx(float(want.detach()), abs=1e-5)
    torch.testing.assert_close(grad, want_grad, atol=1e-6, rtol=1e-4)
    same = simclr.nt_xent(z1.detach(), z1.detach())  # views that agree: well below chance, ln 15
    assert float(same) < float(ours.detach()) and float(ours.detach()) > 0


def test_moco_head_queue_loss_and_momentum_match_lightlys_number_for_number():
    """MoCo v2 (``--ssl-method moco``) against lightly: the projection head weight for weight, InfoNCE with the
    queue as ``NTXentLoss(memory_bank_size=...)`` computes it and the queue as its memory bank fills (over steps
    whose batches do not divide it, so its wrap is crossed), and the key encoder's step as ``update_momentum``."""
    lightly_heads = pytest.importorskip("lightly.models.modules.heads")
    from lightly.loss import NTXentLoss
    from lightly.models.utils import update_momentum

    torch.manual_seed(0)
    backbone = torch.nn.Linear(8, 32)
    heads = moco.Heads(backbone, 32, queue=20)
    assert same_head(heads.projection, lightly_heads.MoCoProjectionHead(32, 32, moco.OUTPUT_DIM), 32)
    assert all(not p.requires_grad for p in [*heads.key_backbone.parameters(), *heads.key_projection.parameters()])

    criterion = NTXentLoss(temperature=moco.TEMPERATURE, memory_bank_size=(20, moco.OUTPUT_DIM))
    criterion.memory_bank.bank = heads.queue.clone()
    for step in range(4):  # 8 keys a step into 20 places: 0-8, 8-16, 16-20 (the rest dropped), 0-8
        q = torch.nn.functional.normalize(torch.randn(8, moco.OUTPUT_DIM, requires_grad=True), dim=1)
        k = torch.nn.functional.normalize(torch.randn(8, moco.OUTPUT_DIM), dim=1)
        ours = moco.info_nce(q, k, heads.queue.clone())
        assert float(ours.detach()) == pytest.approx(float(criterion(q, k).detach()), abs=1e-5), step
        heads.enqueue(k)
        assert torch.allclose(heads.queue, criterion.memory_bank.bank, atol=1e-6), step  # lightly normalises again
        assert int(heads.queue_ptr) == int(criterion.memory_bank.bank_ptr), step

    with torch.no_grad():
        for p in [*backbone.parameters(), *heads.projection.parameters()]:
            p.add_(1.0)  # the query moves; its key encoder follows a hundredth of the way
    want_backbone, want_projection = copy.deepcopy(heads.key_backbone), copy.deepcopy(heads.key_projection)
    update_momentum(backbone, want_backbone, moco.MOMENTUM)
    update_momentum(heads.projection, want_projection, moco.MOMENTUM)
    heads.follow(backbone)
    for got, want in ((heads.key_backbone, want_backbone), (heads.key_projection, want_projection)):
        assert all(torch.allclose(a, b) for a, b in zip(got.parameters(), want.parameters()))
    assert not torch.allclose(heads.key_backbone.weight, backbone.weight)


SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def script(name: str):
    """A module of ``scripts/`` (which import each other by name, as run from that folder)."""
    sys.path.insert(0, str(SCRIPTS))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(SCRIPTS))


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("ssl"), n=60, size=32, seed=7)


def test_pretraining_reads_the_training_split_only_and_holds_out_a_tenth_of_its_patients(small):
    store, task = open_store(small), SelfSupervisedTask()
    train_rows, val_rows = task.rows(store, "train"), task.rows(store, "val")
    assert set(train_rows) | set(val_rows) == set(store.rows("train"))  # every training image, no other
    assert not set(train_rows) & set(val_rows) and len(task.rows(store, "test")) == 0
    held = {p for p in store.patients(val_rows)}
    assert held and all(monitored(p) for p in held) and not held & set(store.patients(train_rows))


def test_a_pretraining_run_resumes_to_the_same_weights_and_initialises_a_classifier(small, tmp_path, capsys):
    fast = dict(data=str(small), task="self-supervised", batch_size=8, progress=False, device="cpu")
    train(TrainConfig(out=str(tmp_path / "whole"), epochs=2, **fast))
    train(TrainConfig(out=str(tmp_path / "half"), epochs=1, **fast))  # then resumed for its second epoch
    train(TrainConfig(out=str(tmp_path / "half"), epochs=2, resume=True, **fast))
    a, b = read_checkpoint(tmp_path / "whole" / "last.pt"), read_checkpoint(tmp_path / "half" / "last.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(torch.equal(a["ssl_heads"][k], b["ssl_heads"][k]) for k in a["ssl_heads"])
    assert a["task"] == "self-supervised" and a["method"] == "simsiam" and a["arch"] == "covidnet-cxr3b"
    assert a["best_score"]["metric"] == "val_loss" and -1 <= a["best_score"]["value"] <= 1  # a negative cosine
    lm = load(tmp_path / "whole" / "best.pt", "cpu")
    features = lm.features(open_store(small).read(np.arange(4)))
    assert features.shape == (4, lm.model.num_features) and np.isfinite(features).all()
    with pytest.raises(UsageError, match="predicts nothing: fine-tune it"):  # a backbone, no classifier
        lm.predict(open_store(small).read(np.arange(2)))
    film = next((small.parent / "phantoms" / "images").glob("*.png"))
    assert main(["predict", "--checkpoint", str(tmp_path / "whole" / "best.pt"), str(film), "--device", "cpu"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "predicts nothing" in err[0] and "Traceback" not in err[0]
    run = tmp_path / "fine"
    train(TrainConfig(data=str(small), out=str(run), init=str(tmp_path / "whole" / "best.pt"), epochs=1,
                      batch_size=8, progress=False, device="cpu", precise_bn=16))  # fmt: skip
    fine = read_checkpoint(run / "best.pt")
    assert fine["train_config"]["init"].endswith("best.pt") and fine["task"] == "classification"


def resumed(small, tmp_path: Path, method: str) -> dict:
    """Two epochs of ``method`` in one run and in two (the second resumed): the last checkpoint, the same in both,
    weights and heads."""
    fast = dict(data=str(small), task="self-supervised", ssl_method=method, arch="efficientnet-lite0", batch_size=8,
                progress=False, device="cpu")  # fmt: skip
    train(TrainConfig(out=str(tmp_path / "whole"), epochs=2, **fast))
    train(TrainConfig(out=str(tmp_path / "half"), epochs=1, **fast))
    train(TrainConfig(out=str(tmp_path / "half"), epochs=2, resume=True, **fast))
    a, b = read_checkpoint(tmp_path / "whole" / "last.pt"), read_checkpoint(tmp_path / "half" / "last.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(torch.equal(a["ssl_heads"][k], b["ssl_heads"][k]) for k in a["ssl_heads"])
    return a


def initialises_a_classifier(small, ckpt: Path, run: Path) -> bool:
    """Whether ``efficientnet-lite0`` fine-tunes from the pretraining ``ckpt`` into a classifier."""
    train(TrainConfig(data=str(small), out=str(run), arch="efficientnet-lite0", init=str(ckpt), epochs=1,
                      batch_size=8, progress=False, device="cpu"))  # fmt: skip
    return read_checkpoint(run / "best.pt")["task"] == "classification"


def test_a_simclr_run_resumes_to_the_same_weights_and_initialises_a_classifier(small, tmp_path):
    a = resumed(small, tmp_path, "simclr")
    assert a["method"] == "simclr" and a["temperature"] == simclr.TEMPERATURE
    assert 0 < a["best_score"]["value"] < 10  # NT-Xent over 15 candidates: ln 15 = 2.7 at chance
    assert initialises_a_classifier(small, tmp_path / "whole" / "best.pt", tmp_path / "fine")


def test_a_moco_run_resumes_to_the_same_weights_key_encoder_and_queue_and_initialises_a_classifier(small, tmp_path):
    a = resumed(small, tmp_path, "moco")
    assert a["method"] == "moco" and a["queue"] == moco.QUEUE and a["temperature"] == moco.TEMPERATURE
    seen = 2 * len(SelfSupervisedTask().rows(open_store(small), "train"))
    assert seen < moco.QUEUE and int(a["ssl_heads"]["queue_ptr"]) == seen  # every training key queued, once an epoch
    keys = {k for k in a["ssl_heads"] if k.startswith("key_backbone.")}
    assert {k.removeprefix("key_backbone.") for k in keys} == set(a["model"])  # the whole backbone, followed
    assert not all(torch.equal(a["ssl_heads"]["key_backbone." + k], a["model"][k]) for k in a["model"])
    assert 0 < a["best_score"]["value"] < 20  # a cross-entropy over 513 candidates: ln 513 = 6.2 at chance
    assert initialises_a_classifier(small, tmp_path / "whole" / "best.pt", tmp_path / "fine")


@pytest.mark.slow
def test_a_two_process_moco_run_queues_the_keys_of_both_processes(small, tmp_path):
    """Under torchrun each process computes the keys of its half of a batch; the queue must take both halves
    (``Dist.gather``), so it advances by the whole batch a step, as in one process."""
    common = ["pretrain", "--data", str(small), "--arch", "efficientnet-lite0", "--ssl-method", "moco",
              "--epochs", "2", "--batch-size", "8", "--no-progress", "--device", "cpu"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "covidnet", *common, "--out", str(tmp_path / "two")],
                         capture_output=True, text=True, timeout=600, env=env)  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    assert main([*common, "--out", str(tmp_path / "one")]) == 0
    a, b = read_checkpoint(tmp_path / "one" / "last.pt"), read_checkpoint(tmp_path / "two" / "last.pt")
    seen = 2 * len(SelfSupervisedTask().rows(open_store(small), "train"))
    assert int(a["ssl_heads"]["queue_ptr"]) == int(b["ssl_heads"]["queue_ptr"]) == seen  # one process's: seen / 2
    queued = b["ssl_heads"]["queue"][:seen]
    assert torch.allclose(queued.norm(dim=1), torch.ones(seen), atol=1e-4)
    assert len(torch.unique(queued, dim=0)) == seen  # every key once, none of one process queued twice
    assert not any((tmp_path / "two").glob("*rank*"))


def test_resuming_a_pretraining_whose_optimiser_trained_other_parameters_is_one_line(small, tmp_path):
    """Before the classifier's head was frozen, a pretraining's optimiser held its parameters too."""
    fast = dict(data=str(small), task="self-supervised", batch_size=8, progress=False, device="cpu")
    train(TrainConfig(out=str(tmp_path / "run"), epochs=1, **fast))
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    group = ckpt["optimizer"]["param_groups"][0]
    group["params"] = [*group["params"], max(group["params"]) + 1]  # one parameter more than this run trains
    torch.save(ckpt, tmp_path / "run" / "last.pt")
    with pytest.raises(ConfigError, match=r"last.pt: its optimiser state does not fit .* without --resume"):
        train(TrainConfig(out=str(tmp_path / "run"), epochs=2, resume=True, **fast))


def test_pretraining_refuses_what_would_teach_it_nothing(small, tmp_path):
    with pytest.raises(ConfigError, match="needs augmentation"):
        still = dict(translate=0, rotate=0, hflip=0, brightness=0, zoom_min=1, zoom_max=1, aug_gamma=0, aug_blur=0)
        train(TrainConfig(data=str(small), out=str(tmp_path / "r"), task="self-supervised", aug_noise=0, **still))
    with pytest.raises(ConfigError, match="is not a setting of --task self-supervised"):
        train(TrainConfig(data=str(small), out=str(tmp_path / "r"), task="self-supervised", binary=True))
    with pytest.raises(ConfigError, match="--ssl-method must be one of simsiam, moco, simclr, not 'byol'"):
        train(TrainConfig(data=str(small), out=str(tmp_path / "r"), task="self-supervised", ssl_method="byol"))
    with pytest.raises(ConfigError, match="--ssl-method is not a setting of --task classification"):
        TrainConfig(data=str(small), out=str(tmp_path / "r"), ssl_method="moco")
    assert not (tmp_path / "r").exists()


def test_pretraining_reads_folders_of_unlabelled_films_and_never_a_scored_one(small, tmp_path, monkeypatch):
    """``--images``: every film under the folders, through the build's contract, beside its training split (read
    in chunks, small here so that their seams are crossed); the build's own validation and test films among them
    (the phantoms' source folder holds all 60) left out as duplicates, an unreadable file left out, both listed;
    the staged store's films refuse to be labels."""
    monkeypatch.setattr(films_module, "CHUNK", 7)
    store = open_store(small)
    films = tmp_path / "films"
    shutil.copytree(small.parent / "phantoms" / "images", films / "nested" / "deeper")
    (films / "broken.png").write_bytes(b"not a png")
    other = write_phantom_dataset(tmp_path / "other", SynthConfig(n=12, seed=99, size=64), progress=False) / "images"
    run = tmp_path / "ssl"
    cfg = dict(data=str(small), task="self-supervised", batch_size=8, epochs=1, progress=False, device="cpu")
    train(TrainConfig(out=str(run), images=[str(films), str(other)], **cfg))
    staged = open_store(run / "films")
    assert sorted(p.name for p in (run / "films").iterdir()) == [
        "contract.json",
        "films.csv",
        "images.npy",
        "index.csv",
    ]
    listing = list(csv.DictReader(open(run / "films" / "films.csv")))
    assert len(listing) == 60 + 1 + 12
    scored = {store.index[i]["filename"] for i in np.concatenate([store.rows("val"), store.rows("test")])}
    dropped = {Path(r["path"]).name: r["reason"] for r in listing if r["kept"] == "0"}
    assert dropped.pop("broken.png").startswith("unreadable")
    assert len(dropped) == 60 and all("duplicate of" in why for why in dropped.values())  # the build's own films
    assert {name for name, why in dropped.items() if "scored: never" in why} == scored
    kept = [r for r in listing if r["kept"] == "1"]
    assert len(kept) == 12 and all("/other/" in r["path"] for r in kept)
    assert len(staged.rows("train")) == len(store.rows("train")) + len(kept) == len(staged.rows())
    own = store.rows("train")
    assert np.array_equal(staged.read(np.arange(len(own))), store.read(own))  # the build's own pixels, unchanged
    row = len(own)  # the first film: the other folder's first image, through the build's contract
    assert np.array_equal(staged.read(np.array([row]))[0], store.contract.load(kept[0]["path"]))
    assert staged.contract == store.contract and staged.sources(np.array([row])) == ["images"]
    assert staged.index[row]["patient_id"] == Path(kept[0]["path"]).name
    with pytest.raises(CovidnetError, match="have no label"):
        staged.labels()
    assert read_checkpoint(run / "best.pt")["train_config"]["images"] == [str(films), str(other)]
    train(TrainConfig(out=str(run), images=[str(films), str(other)], resume=True, **{**cfg, "epochs": 2}))


def test_pretraining_refuses_a_folder_without_a_readable_film_before_writing_anything(small, tmp_path):
    empty, unreadable = tmp_path / "empty", tmp_path / "unreadable"
    empty.mkdir()
    (empty / "notes.txt").write_text("no film here")
    unreadable.mkdir()
    (unreadable / "a.png").write_bytes(b"not a png")
    run = tmp_path / "r"
    cfg = dict(data=str(small), task="self-supervised", out=str(run), progress=False, device="cpu")
    with pytest.raises(ConfigError, match=f"--images {empty}: no image file"):
        train(TrainConfig(images=[str(empty)], **cfg))
    with pytest.raises(ConfigError, match=f"--images {unreadable}: no film to pretrain on: 1 unreadable, 0 dup.*a.png"):
        train(TrainConfig(images=[str(unreadable)], **cfg))
    with pytest.raises(ConfigError, match="no film to pretrain on: 0 unreadable, 60 duplicates of the build's own"):
        train(TrainConfig(images=[str(small.parent / "phantoms" / "images")], **cfg))
    with pytest.raises(ConfigError, match=f"--images {tmp_path / 'nowhere'}: not a folder"):
        train(TrainConfig(images=[str(tmp_path / "nowhere")], **cfg))
    assert not run.exists() and not list(tmp_path.glob(".r.films-*"))  # nor its staging beside it
    with pytest.raises(ConfigError, match="--images is not a setting of --task classification"):
        TrainConfig(data=str(small), out=str(run), images=[str(unreadable)])


def test_the_view_separability_script_learns_identical_views_and_reports_the_pretraining_views(small):
    """``scripts/view_separability.py``, the instrument behind docs/training.md's "the views outweigh the films":
    with two identical copies of each film, NT-Xent must fall far below chance within 25 steps (else the
    instrument could not tell a hard view from a broken loop); the pretraining views' curve is reported beside it."""
    pytest.importorskip("lightly")
    script = SCRIPTS / "view_separability.py"
    args = [str(small), "efficientnet-lite0", "25", "8", "1e-3", "0", '{"rotate": 5}']
    r = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["chance"] == pytest.approx(np.log(15), abs=1e-3) and out["options"] == {"rotate": 5}
    assert len(out["views"]) == len(out["identical"]) == 1
    assert out["identical"][0] < out["chance"] / 2, out
    r = subprocess.run([sys.executable, str(script), *args, "moco"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr  # the task's own MoCo network, stepped as the task steps it
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["loss"] == "moco" and out["chance"] == pytest.approx(np.log(moco.QUEUE + 1), abs=1e-3)
    assert len(out["views"]) == len(out["identical"]) == 1 and all(np.isfinite(out["views"] + out["identical"]))
    r = subprocess.run([sys.executable, str(script), *args, "byol"], capture_output=True, text=True, timeout=600)
    assert r.returncode != 0 and "LOSS must be ntxent or moco, not 'byol'" in r.stderr


@pytest.mark.slow
def test_the_probe_recomputes_batchnorm_from_the_fitted_films_and_reads_every_backbone_both_ways(small, tmp_path):
    """``scripts/transfer_probe.py``, the instrument behind docs/training.md's probe tables: ``recalibrate`` gives
    each BatchNorm the statistics of the unaugmented films it is asked for (the stem's, computed here directly,
    one batch), and ``--build`` reads the pretraining and random weights with their statistics as held and as
    recomputed."""
    pytest.importorskip("sklearn")
    transfer_probe = script("transfer_probe")
    run = tmp_path / "ssl"
    train(TrainConfig(data=str(small), out=str(run), task="self-supervised", arch="efficientnet-lite0", epochs=1,
                      batch_size=8, progress=False, device="cpu"))  # fmt: skip
    store, lm = open_store(small), load(run / "best.pt", "cpu")
    rows = store.rows("train")
    assert len(rows) <= 64  # one batch: the cumulative average is the films' own mean and variance
    held = lm.model.stem.bn.running_mean.clone()
    transfer_probe.recalibrate(lm, store, rows)
    bn, seen = lm.model.stem.bn, []
    hook = bn.register_forward_hook(lambda module, args, output: seen.append(args[0]))
    unit = uint8_to_unit(torch.from_numpy(lm.contract.standardise(store.read(rows))))
    with torch.no_grad():
        lm.model.forward_features(lm.contract.model_input(unit, lm.memory_format))  # in eval mode: no update
    hook.remove()
    y = seen[0]
    assert not lm.model.training and not torch.allclose(held, bn.running_mean, atol=1e-3)
    torch.testing.assert_close(bn.running_mean, y.mean((0, 2, 3)), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(bn.running_var, y.var((0, 2, 3)), atol=1e-5, rtol=1e-4)  # unbiased, as BN keeps it
    command = [sys.executable, str(SCRIPTS / "transfer_probe.py"), "--build", str(small), str(run / "best.pt")]
    r = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    for name in ("ssl", "random"):
        for key in (name, f"{name}_bn"):
            assert 0 <= out[key] <= 1 and 0 <= out[f"{key}_retrieval"] <= 1, out
    assert out["scored"] == len(store.rows("val")) + len(store.rows("test")) and out["fit"] == len(rows)


def test_the_pooled_noise_control_keeps_the_sets_grey_levels_but_not_the_histograms_that_tell_a_phantoms_class(
    tmp_path,
):
    """``scripts/pretrain_probe.py``'s controls, on phantoms: permuting each image's pixels keeps its histogram, and
    a probe on the histograms alone (``transfer_probe.histogram_probe``) tells the classes as well from that
    noise as from the films; permuting the pixels across the whole set keeps only the set's grey levels, and the
    same probe falls to near chance: the control that carries no class."""
    pytest.importorskip("sklearn")
    pretrain_probe, transfer_probe = script("pretrain_probe"), script("transfer_probe")
    ds = make_dataset(tmp_path / "films", n=240, size=32, seed=3)
    within = pretrain_probe.shuffled_copy(ds, tmp_path / "within", 0)
    pooled = pretrain_probe.shuffled_copy(ds, tmp_path / "pooled", 0, across_set=True)
    films, noise, mixed = (np.load(d / "images.npy") for d in (ds, within, pooled))
    assert np.array_equal(np.sort(films.reshape(-1)), np.sort(mixed.reshape(-1)))
    assert np.array_equal(np.sort(films.reshape(len(films), -1)), np.sort(noise.reshape(len(noise), -1)))
    assert not np.array_equal(np.sort(films.reshape(len(films), -1)), np.sort(mixed.reshape(len(mixed), -1)))
    probes = {}
    for name, d in (("films", ds), ("within", within), ("pooled", pooled)):
        store = open_store(d)
        scored = np.concatenate([store.rows("val"), store.rows("test")])
        probes[name] = transfer_probe.histogram_probe(store, store.rows("train"), scored)
    assert probes["films"] == probes["within"] >= 0.6, probes
    assert probes["pooled"] <= 0.5, probes


@pytest.mark.slow
def test_simclr_on_phantoms_tells_their_classes_apart_where_random_weights_and_noise_pretraining_do_not(
    tmp_path, capsys
):
    """The pretraining known answer on phantoms (docs/training.md, "SimCLR at a constant rate…"): SimCLR
    (``--ssl-method simclr``, 120 epochs, batch 32, Adam 1e-3 held constant) on the training split of 300
    phantoms at 64 px; a linear probe on its frozen features, BatchNorm recomputed from the fitted phantoms, must
    read at least 0.10 above the best of five random draws of the same architecture, and the same pretraining on
    the phantoms with their pixels permuted within each image (each keeps its histogram) or across the set (no
    image keeps anything of its class) must not. Seed 2, one of the two seeds of the confirmation whose
    criterion was written before it ran."""
    pytest.importorskip("sklearn")
    pretrain_probe = script("pretrain_probe")
    options = json.dumps({"ssl_method": "simclr", "plateau_patience": 1000})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the measured run: the same sums in the same order, so the same figures
    try:  # the three pretrainings at once, each in its own process at one thread (the same weights as one by one)
        settings = ("2", "efficientnet-lite0", "120", "300", "64", "32", "1e-3", options, "5", "3")
        pretrain_probe.main(str(tmp_path), *settings)
    finally:
        torch.set_num_threads(threads)
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    bar = max(out[f"random{k or ''}_bn"] for k in range(5)) + 0.10
    assert out["ssl_bn"] >= bar, out
    assert out["noise_bn"] < bar and out["pooled_bn"] < bar, out
