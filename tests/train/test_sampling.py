import numpy as np
import pytest

from covidnet.errors import ConfigError
from covidnet.tasks.debias import source_index
from covidnet.train.dist import Dist, shard
from covidnet.train.sampler import epoch_batches


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


@pytest.mark.parametrize("covid_percent", [0, 0.3])
def test_balancing_sources_draws_each_source_of_a_class_equally_and_keeps_the_class_mix(covid_percent):
    # COVID-19: 90 from source 0, 10 from source 1; normal: 60 from source 0, 40 from 1; pneumonia: source 2 only
    labels = np.array([2] * 100 + [0] * 100 + [1] * 50)
    groups = np.array([0] * 90 + [1] * 10 + [0] * 60 + [1] * 40 + [2] * 50)
    plain = epoch_batches(labels, 3, 0, 10, 2, covid_percent)
    drawn = [np.concatenate(epoch_batches(labels, e, 0, 10, 2, covid_percent, groups)) for e in range(20)]
    assert [len(b) for b in epoch_batches(labels, 3, 0, 10, 2, covid_percent, groups)] == [len(b) for b in plain]
    one = np.concatenate(plain)
    assert all((labels[d] == c).sum() == (labels[one] == c).sum() for d in drawn for c in range(3))  # class mix kept
    every = np.concatenate(drawn)
    for c in (2, 0):
        share = (groups[every[labels[every] == c]] == 1).mean()
        assert share == pytest.approx(0.5, abs=0.03)  # 10 % and 40 % of the class before
    assert set(every[labels[every] == 1].tolist()) == set(range(200, 250))  # a single-source class: all of it drawn


def test_balancing_needs_a_class_from_two_sources():
    index, names, mixed = source_index(["b", "a", "a", "b"], np.array([0, 0, 1, 1]), "--balance-sources")
    assert (index.tolist(), names, mixed) == ([1, 0, 0, 1], ["a", "b"], [0, 1])
    with pytest.raises(ConfigError, match="--balance-sources needs a class that comes from two or more sources"):
        source_index(["a", "a", "b"], np.array([0, 0, 1]), "--balance-sources")
