"""Raghu et al.'s mean-var initialisation: every redrawn tensor has its pretrained tensor's mean and std, within
sampling error, and none of its values (correlation near 0); seeds decide the draw; the head and BatchNorm
statistics are handled as the docstring says."""

import copy
import math

import pytest
import torch

from covidnet.errors import CovidnetError
from covidnet.models import create_model
from covidnet.models.transfer import mean_var_
from covidnet.tasks.image import imagenet_model

TINY = {"widths": (16, 32, 64, 128), "head_hidden": (32,)}


def pretrained(source: str) -> torch.nn.Module:
    """ImageNet's EfficientNet-Lite0 (the extra), or a stand-in: a small COVID-Net whose tensors are each
    shifted and scaled apart, so that a mean or spread carried to the wrong tensor would show."""
    if source == "efficientnet-lite0":
        try:
            return imagenet_model("efficientnet-lite0", 3, 1)
        except CovidnetError as e:
            pytest.skip(str(e))
    torch.manual_seed(1)
    model = create_model("covidnet-cxr3b", num_classes=3, in_channels=1, **TINY)
    with torch.no_grad():
        for k, p in enumerate(model.parameters()):
            p.normal_(0.1 * (k % 7) - 0.3, 0.02 * (1 + k % 5))
    return model


@pytest.mark.parametrize("source", ["efficientnet-lite0", "stand-in"])
def test_mean_var_keeps_each_tensors_mean_and_std_but_not_its_values(source):
    ref = pretrained(source)
    model = copy.deepcopy(ref)
    redrawn = mean_var_(model, seed=0)
    before, after = dict(ref.named_parameters()), dict(model.named_parameters())
    head = {f"classifier.{k}" for k, _ in model.get_classifier().named_parameters()}
    assert set(redrawn) == {k for k, p in before.items() if p.numel() > 1} - head
    for name in redrawn:
        a, b = before[name].detach().flatten().double(), after[name].detach().flatten().double()
        n, m, s = a.numel(), a.mean().item(), a.std(correction=0).item()
        se = s / math.sqrt(n)  # standard error of the mean; of the std it is about s / sqrt(2n)
        assert abs(b.mean().item() - m) < 5 * se + 1e-7, name
        assert abs(b.std(correction=0).item() - s) < 5 * s / math.sqrt(2 * n) + 1e-7, name
        r = torch.corrcoef(torch.stack([a, b]))[0, 1].item()
        assert abs(r) < 5 / math.sqrt(n), (name, r)  # independent draws: r is about N(0, 1/n)
    for k in head:  # the classifier keeps its fresh initialisation
        assert torch.equal(before[k], after[k])


def test_mean_var_resets_batchnorm_statistics_and_seeds_decide_the_draw():
    ref = pretrained("stand-in")
    for m in ref.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.fill_(3.0)
            m.running_var.fill_(5.0)
    a, b, c = (copy.deepcopy(ref) for _ in range(3))
    redrawn = mean_var_(a, seed=0)
    mean_var_(b, seed=0), mean_var_(c, seed=1)
    bn = next(m for m in a.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))
    assert torch.equal(bn.running_var, torch.ones_like(bn.running_var))
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)  # same seed, same weights
    assert not any(torch.equal(sa[k], sc[k]) for k in redrawn)  # another seed: every redrawn tensor differs
