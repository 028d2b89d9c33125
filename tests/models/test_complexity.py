"""Complexity: each COVID-Net preset within 10 % of its published figures, and the MAC counter
checked against figures published for torchvision's models."""

import pytest
import torch

from covidnet.models import create_model, get_spec, list_models
from covidnet.profile import count_macs, profile_model

PRESETS = [n for n in list_models() if get_spec(n).published]


def test_every_covidnet_preset_has_published_figures():
    assert set(PRESETS) == {"covidnet-cxr-small", "covidnet-cxr-large", "covidnet-cxr3b"}


@pytest.mark.parametrize("arch", PRESETS)
def test_preset_within_ten_percent_of_published_params_and_macs(arch):
    pub = get_spec(arch).published
    p = profile_model(arch, pub.size, runs=0)
    assert p.params / 1e6 == pytest.approx(pub.params_m, rel=0.10)
    assert p.macs / 1e9 == pytest.approx(pub.macs_g, rel=0.10)


# torchvision's model docs: parameters (1000 classes) and "GFLOPS" at 224 px (which are MACs)
TORCHVISION_PUBLISHED = {
    "resnet50": (25_557_032, 4.09),
    "vgg19": (143_667_240, 19.63),
    "densenet121": (7_978_856, 2.83),
    "mobilenet_v3_large": (5_483_032, 0.22),
}


@pytest.mark.parametrize("arch", sorted(TORCHVISION_PUBLISHED))
def test_mac_counter_agrees_with_torchvision_published_figures(arch):
    params, gmacs = TORCHVISION_PUBLISHED[arch]
    with torch.device("meta"):
        model = create_model(arch, num_classes=1000)
        macs = count_macs(model.eval(), torch.empty(1, 3, 224, 224))
    assert sum(p.numel() for p in model.parameters()) == params
    assert macs / 1e9 == pytest.approx(gmacs, abs=0.01)


def test_profile_measures_latency_and_memory():
    p = profile_model("covidnet-cxr3b", 64, in_channels=1, runs=2, warmup=1)
    assert p.latency_ms > 0
    weights_mib = p.params * 4 / 2**20
    assert p.peak_mem_mb is None or p.peak_mem_mb > weights_mib  # weights plus activations
    d = p.to_dict()
    assert d["latency_ms_cpu"] == p.latency_ms and "latency_ms" not in d


def test_macs_scale_with_input_area():
    small = profile_model("covidnet-cxr3b", 240, runs=0).macs
    large = profile_model("covidnet-cxr3b", 480, runs=0).macs
    assert large / small == pytest.approx(4, rel=0.05)  # a fully convolutional trunk and a pooled head
