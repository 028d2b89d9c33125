"""Balancing without its cost (issue: within one hospital): tempered balancing draws each image with weight
(its class-and-source group's size)^-alpha, between the natural mix (0) and balance (1); group DRO weighs the
(class, source) groups' losses online, the worst the most. Their known answers: the draw shares the formula
gives, the weights the update rule gives, and a run that stops and resumes ends with the weights of one that
did not."""

import numpy as np
import pytest
import torch

from covidnet.errors import ConfigError
from covidnet.tasks.dro import GroupDRO, group_index
from covidnet.train import TrainConfig, train
from covidnet.train.sampler import epoch_batches


@pytest.mark.parametrize("alpha, share", [(0.0, 0.9), (0.5, 0.75), (1.0, 0.5)])
def test_tempered_balancing_draws_a_source_by_its_size_to_the_power_one_minus_alpha(alpha, share):
    # one class, two sources of 90 and 10 images: a source's share of the draws is n^(1-alpha) / sum
    labels, groups = np.zeros(100, np.int64), np.array([0] * 90 + [1] * 10)
    drawn = np.concatenate(
        [np.concatenate(epoch_batches(labels, e, 0, 10, groups=groups, temper=alpha)) for e in range(200)]
    )
    expected = 90 ** (1 - alpha) / (90 ** (1 - alpha) + 10 ** (1 - alpha))
    assert expected == pytest.approx(share, abs=0.01)
    assert (groups[drawn] == 0).mean() == pytest.approx(expected, abs=0.01)
    assert len(drawn) == 200 * 100  # as many images an epoch as without balancing


def test_group_dro_raises_the_weight_of_the_worse_group_and_leaves_an_absent_one():
    groups, pairs = group_index(np.array([0, 0, 1, 1, 2]), np.array(["a", "a", "a", "b", "b"]))
    assert pairs == [(0, "a"), (1, "a"), (1, "b"), (2, "b")] and groups.tolist() == [0, 0, 1, 2, 3]
    dro = GroupDRO(groups, step=0.5, adjustment=0.0, device="cpu")
    # a batch of the first three images: group 0 (two images) predicted right, group 1 wrong, groups 2-3 absent
    logits = torch.tensor([[5.0, 0, 0], [5.0, 0, 0], [5.0, 0, 0]], requires_grad=True)
    y, pos = torch.tensor([0, 0, 1]), torch.tensor([0, 1, 2])
    loss = dro.loss(logits, y, pos)
    ce = torch.nn.functional.cross_entropy(logits.detach(), y, reduction="none")
    l0, l1 = float(ce[:2].mean()), float(ce[2])
    q = np.array([np.exp(0.5 * l0), np.exp(0.5 * l1), 1.0, 1.0]) / 4
    q /= q.sum()
    assert dro.q.numpy() == pytest.approx(q, rel=1e-5)  # absent groups kept their weight before renormalising
    assert float(loss.detach()) == pytest.approx(q[0] * l0 + q[1] * l1, rel=1e-5)
    assert dro.q[1] > 0.5 > dro.q[0] > dro.q[2] == dro.q[3]  # the wrong group most; a present one over an absent


def test_the_group_size_adjustment_adds_c_over_the_root_of_the_groups_size():
    dro = GroupDRO(np.array([0] * 4 + [1] * 16), step=0.0, adjustment=2.0, device="cpu")
    assert dro.adjust.numpy() == pytest.approx([2 / 2, 2 / 4])


def test_tempering_and_dro_refuse_what_does_not_go_with_them(tmp_path):
    with pytest.raises(ConfigError, match="--balance-temper tempers --balance-sources"):
        train(TrainConfig(data=str(tmp_path), out=str(tmp_path / "r"), balance_temper=0.5))
    with pytest.raises(ConfigError, match="give --class-weights none"):
        train(TrainConfig(data=str(tmp_path), out=str(tmp_path / "r"), group_dro=True))
    with pytest.raises(ConfigError, match="--balance-temper must be in"):
        train(TrainConfig(data=str(tmp_path), out=str(tmp_path / "r"), balance_sources=True, balance_temper=2))
    with pytest.raises(ConfigError, match="is not a setting of --task severity"):
        train(TrainConfig(data=str(tmp_path), out=str(tmp_path / "r"), task="severity", group_dro=True))
