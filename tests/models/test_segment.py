"""The segmenters of the registry (``models/segment.py``): created by name like the classifiers, one logit
per pixel at the input's size for any side, trainable from random initialisation."""

import pytest
import torch

from covidnet.errors import ConfigError
from covidnet.models import create_model, get_spec, list_models

SEGMENTERS = list_models("segmenter")


def test_the_registry_holds_two_segmenters_apart_from_the_classifiers():
    assert SEGMENTERS == ["lung-unet", "lung-unet-tiny"]
    assert not set(SEGMENTERS) & set(list_models())
    assert set(list_models(None)) == set(list_models()) | set(SEGMENTERS) | {"lung-field"}
    assert all(get_spec(n).family == "segment" and get_spec(n).kind == "segmenter" for n in SEGMENTERS)


@pytest.mark.parametrize("arch", SEGMENTERS)
@pytest.mark.parametrize("side", [(64, 64), (50, 72)])
def test_one_logit_per_pixel_at_any_side_and_gradients_reach_the_first_layer(arch, side):
    model = create_model(arch, num_classes=1, in_channels=1)
    x = torch.randn(2, 1, *side)
    y = model(x)
    assert y.shape == (2, 1, *side) and torch.isfinite(y).all()
    y.mean().backward()
    first = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert first.in_channels == 1 and first.weight.grad.abs().sum() > 0
    assert model.arch == arch and model.arch_args == {"num_classes": 1, "in_channels": 1}


def test_sizes_are_as_the_descriptions_say():
    assert create_model("lung-unet", num_classes=1, in_channels=1).get_num_params() == pytest.approx(1.96e6, rel=0.01)
    assert create_model("lung-unet-tiny", num_classes=1, in_channels=1).get_num_params() < 0.2e6
    assert create_model("lung-unet", num_classes=1, in_channels=1, widths=[8, 16]).config.widths == (8, 16)


def test_a_segmenter_needs_one_output_and_a_classifier_two():
    with pytest.raises(ConfigError, match="at least 1"):
        create_model("lung-unet-tiny", num_classes=0, in_channels=1)
    with pytest.raises(ConfigError, match="at least 2"):
        create_model("covidnet-cxr3b", num_classes=1)
