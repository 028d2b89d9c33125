"""Training streams from the store when the images do not fit the host-memory budget: the same batches,
the same weights as the in-memory path, and a store read without mapping it whole."""

import numpy as np
import pytest
import torch
from phantomdata import make_dataset

from covidnet.checkpoint import read_checkpoint
from covidnet.data.store import open_store
from covidnet.errors import ConfigError
from covidnet.train import TrainConfig, train
from covidnet.train.feed import InMemory, Streamed, memory_budget, prefetch, stage


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("stream"), n=40, size=32)


def test_store_read_gives_the_memory_mapped_pixels(ds):
    store = open_store(ds)
    rows = np.array([5, 0, 3, 3, len(store.images) - 1])
    np.testing.assert_array_equal(store.read(rows), store.images[rows])
    with pytest.raises(IndexError):
        store.read(np.array([len(store.images)]))


def test_the_budget_decides_in_memory_or_streamed(ds):
    store = open_store(ds)
    rows = store.rows("train")
    assert isinstance(stage(store, rows, torch.device("cpu"), budget=10**9), InMemory)
    streamed = stage(store, rows, torch.device("cpu"), budget=100)
    assert isinstance(streamed, Streamed)
    pos = np.array([2, 0, 1])
    np.testing.assert_array_equal(streamed[pos].numpy(), store.images[rows[pos]])
    batches = [np.array([0, 1]), np.array([2]), np.array([3, 4, 5])]
    got = [b.numpy() for b in prefetch(streamed, batches)]
    assert [len(g) for g in got] == [2, 1, 3] and np.array_equal(got[2], store.images[rows[[3, 4, 5]]])
    assert memory_budget(2.0) == 2 * 2**30 and memory_budget(0) > 0
    with pytest.raises(ConfigError, match="host-memory-gb"):
        memory_budget(-1)


def test_prefetch_raises_the_readers_error_in_the_loop(ds):
    store = open_store(ds)
    streamed = Streamed(store, store.rows("train"), pin=False)
    with pytest.raises(IndexError):
        list(prefetch(streamed, [np.array([0]), np.array([10**6])]))


@pytest.mark.slow
def test_streamed_training_gives_the_same_weights_as_in_memory(ds, tmp_path, capsys):
    common = dict(data=str(ds), epochs=2, batch_size=8, lr=3e-4, device="cpu", precise_bn=16, seed=3, progress=True)
    train(TrainConfig(out=str(tmp_path / "mem"), host_memory_gb=4.0, **common))
    assert "streaming" not in capsys.readouterr().err
    train(TrainConfig(out=str(tmp_path / "stream"), host_memory_gb=1e-6, **common))
    assert "streaming them from" in capsys.readouterr().err
    a, b = read_checkpoint(tmp_path / "mem" / "last.pt"), read_checkpoint(tmp_path / "stream" / "last.pt")
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_max_steps_ends_the_run_mid_epoch(ds, tmp_path):
    summary = train(
        TrainConfig(
            data=str(ds),
            out=str(tmp_path / "r"),
            epochs=5,
            batch_size=8,
            device="cpu",
            precise_bn=0,
            progress=False,
            max_steps=2,
        )
    )
    # two steps of about 8 images (the remainder of the split is spread over the batches), not five epochs
    assert summary["final"]["epoch"] == 1 and 16 <= summary["final"]["images_seen"] < 24
