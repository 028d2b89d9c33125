"""Self-supervised pretraining (``covidnet pretrain``): SimSiam's heads and loss as lightly writes them, the
training split only (its held-out tenth watched, never val or test), a run that resumes and a checkpoint that
``covidnet train --init`` takes."""

import numpy as np
import pytest
import torch
from phantomdata import make_dataset

from covidnet.checkpoint import read_checkpoint
from covidnet.data.store import open_store
from covidnet.errors import ConfigError
from covidnet.runtime import load
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


def test_a_pretraining_run_resumes_to_the_same_weights_and_initialises_a_classifier(small, tmp_path):
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
    run = tmp_path / "fine"
    train(TrainConfig(data=str(small), out=str(run), init=str(tmp_path / "whole" / "best.pt"), epochs=1,
                      batch_size=8, progress=False, device="cpu", precise_bn=16))  # fmt: skip
    fine = read_checkpoint(run / "best.pt")
    assert fine["train_config"]["init"].endswith("best.pt") and fine["task"] == "classification"


def test_pretraining_refuses_what_would_teach_it_nothing(small, tmp_path):
    with pytest.raises(ConfigError, match="needs augmentation"):
        still = dict(translate=0, rotate=0, hflip=0, brightness=0, zoom_min=1, zoom_max=1, aug_gamma=0, aug_blur=0)
        train(TrainConfig(data=str(small), out=str(tmp_path / "r"), task="self-supervised", aug_noise=0, **still))
    with pytest.raises(ConfigError, match="is not a setting of --task self-supervised"):
        train(TrainConfig(data=str(small), out=str(tmp_path / "r"), task="self-supervised", binary=True))
