import numpy as np
import pytest

from covidnet.train import Dist, epoch_batches, shard


@pytest.mark.parametrize("n, batch, world", [(100, 8, 1), (101, 8, 2), (37, 6, 3), (9, 8, 2)])
def test_without_rebalancing_every_image_once_per_epoch_across_ranks(n, batch, world):
    labels = np.arange(n) % 3
    batches = epoch_batches(labels, epoch=2, seed=0, batch_size=batch, covid_class=2, covid_percent=0)
    per_rank = [np.concatenate([shard(b, Dist(r, world)) for b in batches]) for r in range(world)]
    everything = np.concatenate(per_rank)
    assert sorted(everything.tolist()) == list(range(n))  # each image exactly once, no padding
    assert all(len(shard(b, Dist(r, world))) >= 1 for b in batches for r in range(world))
    assert max(len(b) for b in batches) < 2 * batch


def test_rebalancing_puts_the_requested_share_of_covid_in_each_batch():
    labels = np.array([0] * 80 + [1] * 80 + [2] * 10)
    batches = epoch_batches(labels, 0, 0, batch_size=10, covid_class=2, covid_percent=0.3)
    assert all((labels[b] == 2).sum() == 3 for b in batches)
    others = np.concatenate([b[labels[b] != 2] for b in batches])
    assert sorted(others.tolist()) == list(range(160))  # every other image once


def test_epochs_differ_and_seeds_repeat():
    labels = np.zeros(50, int)
    a = epoch_batches(labels, 0, 0, 8, None, 0)
    b = epoch_batches(labels, 0, 0, 8, None, 0)
    c = epoch_batches(labels, 1, 0, 8, None, 0)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
