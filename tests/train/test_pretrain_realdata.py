"""The pretraining known answer on the development films (issue: does pretraining help?): SimCLR on a build's
training films puts into the backbone what a linear probe reads and random weights do not, and the same
pretraining on noise with the films' grey levels (pixels permuted across the whole set, so no film's class
survives) does not. Both readings with every backbone's BatchNorm statistics recomputed from the fitted films
(``scripts/transfer_probe.py``); the figures and the phantom attempts before it: docs/training.md. About half
an hour on 2 CPU cores: two 60-epoch pretrainings at 64 px."""

import numpy as np
import pytest
from test_pretrain import script

from covidnet.data.build import BuildConfig, SourceSpec, build_dataset
from covidnet.data.store import open_store
from covidnet.runtime import load
from covidnet.train import TrainConfig, train

pytestmark = [pytest.mark.realdata, pytest.mark.slow]

MARGIN = 0.05  # fixed before the runs (2026-12-07), as for the phantoms


def test_simclr_gives_the_films_features_that_random_weights_and_a_noise_pretraining_do_not(shared_data, tmp_path):
    pytest.importorskip("sklearn")
    pretrain_probe, transfer_probe = script("pretrain_probe"), script("transfer_probe")
    sources = shared_data / "sources"
    build_dataset(
        BuildConfig(
            sources=[SourceSpec(r, sources / r, r) for r in ("cohen", "figure1", "nih", "kermany")],
            out=tmp_path / "films",
            size=64,
            progress=False,
        )
    )
    films = tmp_path / "films"
    noise = pretrain_probe.pooled_shuffled_copy(films, tmp_path / "noise", 0)
    for data, out in ((films, "simclr"), (noise, "control")):
        train(TrainConfig(data=str(data), out=str(tmp_path / out), task="self-supervised", ssl_method="simclr",
                          arch="efficientnet-lite0", epochs=60, batch_size=32, lr=1e-3, seed=0, progress=False,
                          device="cpu"))  # fmt: skip
    store = open_store(films)
    fit, scored = store.rows("train"), np.concatenate([store.rows("val"), store.rows("test")])
    views = transfer_probe.views_of(store, scored)
    got = {}
    for name in ("simclr", "control"):
        got |= transfer_probe.readings(load(tmp_path / name / "best.pt", "cpu"), store, fit, scored, views, name)
    got |= transfer_probe.random_weights(load(tmp_path / "simclr" / "best.pt", "cpu"), store, fit, scored,
                                         "efficientnet-lite0", 0, views)  # fmt: skip
    assert got["simclr_bn"] >= got["random_bn"] + MARGIN, got
    assert got["control_bn"] < got["random_bn"] + MARGIN, got
