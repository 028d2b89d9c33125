import pytest
import torch

from covidnet.errors import ConfigError, UnknownModelError
from covidnet.models import create_model, get_spec, list_models
from covidnet.models.zoo import adapt_input_conv

ALL = list_models()


def test_registry_holds_the_three_presets_four_baselines_and_efficientnet_lite0():
    assert set(ALL) == {
        "covidnet-cxr-small",
        "covidnet-cxr-large",
        "covidnet-cxr3b",
        "resnet50",
        "vgg19",
        "densenet121",
        "mobilenet_v3_large",
        "efficientnet-lite0",
    }


@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("arch", ALL)
def test_forward_and_backward_at_small_input(arch, in_channels):
    num_classes = 3 if in_channels == 3 else 2  # cover both label sets without doubling the cost
    model = create_model(arch, num_classes=num_classes, in_channels=in_channels)
    x = torch.randn(2, in_channels, 64, 64)
    logits = model(x)
    assert logits.shape == (2, num_classes)
    assert torch.isfinite(logits).all()
    logits.logsumexp(dim=1).sum().backward()
    first_conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert first_conv.in_channels == in_channels
    assert first_conv.weight.grad is not None and first_conv.weight.grad.abs().sum() > 0
    assert model.get_classifier().weight.grad.abs().sum() > 0


@pytest.mark.parametrize("arch", ALL)
def test_uniform_interface(arch):
    model = create_model(arch, num_classes=3, in_channels=1).eval()
    x = torch.randn(1, 1, 64, 64)
    seen = {}
    handle = model.cam_layer.register_forward_hook(lambda m, i, o: seen.setdefault("cam", o))
    with torch.no_grad():
        feats = model.forward_features(x)
        assert torch.allclose(model.forward_head(feats), model(x))
    handle.remove()
    assert feats.ndim == 4 and feats.shape[1] == model.num_features
    assert seen["cam"].shape == feats.shape  # Grad-CAM's target layer gives the final feature map
    model.reset_classifier(2)
    assert model(x).shape == (1, 2)
    assert model.arch == arch and model.arch_args == {"num_classes": 3, "in_channels": 1}


def test_unknown_name_lists_the_available_ones():
    with pytest.raises(UnknownModelError) as e:
        create_model("nosuchnet")
    msg = str(e.value)
    assert "nosuchnet" in msg and all(name in msg for name in ALL) and "\n" not in msg


@pytest.mark.parametrize("kwargs", [{"in_channels": 4}, {"num_classes": 1}])
def test_bad_arguments_are_config_errors(kwargs):
    with pytest.raises(ConfigError):
        create_model("covidnet-cxr3b", **kwargs)


def test_grey_input_conv_matches_rgb_conv_on_a_grey_image():
    conv3 = torch.nn.Conv2d(3, 8, 3, padding=1)
    conv1 = adapt_input_conv(conv3, 1)
    grey = torch.rand(1, 1, 16, 16)
    assert torch.allclose(conv1(grey), conv3(grey.expand(-1, 3, -1, -1)), atol=1e-6)


def test_preset_overrides_change_the_architecture():
    m = create_model("covidnet-cxr3b", widths=(32, 64, 128, 256), head_hidden=(64,))
    assert m.num_features == 256
    assert m.arch_args["widths"] == (32, 64, 128, 256)


def test_normalisation_for_grey_input_averages_rgb():
    mean, std = get_spec("resnet50").normalisation(1)
    assert mean == pytest.approx((sum((0.485, 0.456, 0.406)) / 3,))
    assert get_spec("covidnet-cxr3b").normalisation(3) == ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
