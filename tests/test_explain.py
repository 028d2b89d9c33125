"""Class activation maps: every registered architecture, both methods, a known answer, the overlay."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from covidnet.errors import ConfigError
from covidnet.explain import METHODS, CamExplainer, overlay, save_overlay, target_layer_name
from covidnet.models import create_model, list_models

SIZE = 64
TINY = {"widths": (16, 32, 64, 128), "head_hidden": (32,)}  # a COVID-Net small enough to train in seconds

# the docstring of covidnet.explain lists these; target names do not depend on widths
DEFAULT_TARGETS = {
    "covidnet-cxr-small": "stages.3",
    "covidnet-cxr-large": "stages.3",
    "covidnet-cxr3b": "stages.3",
    "resnet50": "features.7",
    "vgg19": "features.36",
    "densenet121": "features.1",
    "mobilenet_v3_large": "features.16",
    "efficientnet-lite0": "conv_head",
}

_MODELS: dict[tuple[str, int], torch.nn.Module] = {}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: these inputs are too small to gain from more, and on a shared 2-core
    machine oversubscribed OpenMP threads made this file 30x slower (12 s -> 7 min)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model(name: str, in_channels: int = 1) -> torch.nn.Module:
    """One eval-mode model per (architecture, channels) for the whole file: building is the slow part.
    COVID-Net presets get narrow widths (same structure, same ``cam_layer``), so the file stays fast."""
    key = (name, in_channels)
    if key not in _MODELS:
        torch.manual_seed(0)
        kwargs = TINY if name.startswith("covidnet") else {}
        _MODELS[key] = create_model(name, num_classes=3, in_channels=in_channels, **kwargs).eval()
    return _MODELS[key]


def _hooks(module: torch.nn.Module) -> int:
    return sum(len(getattr(module, d)) for d in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks"))


def _check_maps(maps: np.ndarray, batch: int, size: int = SIZE) -> None:
    assert maps.shape == (batch, size, size)
    assert maps.dtype == np.float32
    assert np.isfinite(maps).all()
    assert maps.min() >= 0.0 and maps.max() <= 1.0


def test_registry_is_covered():
    assert set(DEFAULT_TARGETS) == set(list_models())


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", list_models())
def test_maps_for_every_architecture(name, method):
    model = _model(name)
    assert target_layer_name(model) == DEFAULT_TARGETS[name]
    explain = CamExplainer(model, method)
    x = torch.rand(2, 1, SIZE, SIZE)
    maps = explain(x)
    _check_maps(maps, 2)
    assert not model.training
    with torch.no_grad():
        _check_maps(explain(x, class_idx=[0, 2]), 2)
    with torch.inference_mode():
        _check_maps(explain(torch.rand(2, 1, SIZE, SIZE), class_idx=1), 2)
    assert _hooks(model.cam_layer) == 0


@pytest.mark.parametrize("name", ["covidnet-cxr3b", "mobilenet_v3_large"])
def test_three_channels_and_other_sizes(name):
    model = _model(name, in_channels=3)
    maps = CamExplainer(model, "gradcam++")(torch.rand(3, 3, 96, 80), class_idx=[2, 1, 0])
    assert maps.shape == (3, 96, 80)
    assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1


def test_channels_last_and_tensor_classes():
    model = create_model("covidnet-cxr3b", num_classes=3, in_channels=1, **TINY).eval()
    model = model.to(memory_format=torch.channels_last)
    x = torch.rand(2, 1, SIZE, SIZE).contiguous(memory_format=torch.channels_last)
    for method in METHODS:
        _check_maps(CamExplainer(model, method)(x, class_idx=torch.tensor([1, 2])), 2)
        _check_maps(CamExplainer(model, method)(x, class_idx=np.int64(0)), 2)


def test_constant_output_gives_zero_maps_not_nan():
    # a zero classifier: constant logits, zero gradients, an all-zero map (MONAI's own scaling would
    # leave it at 0 too; a NaN here would poison every overlay)
    model = create_model("covidnet-cxr3b", num_classes=2, in_channels=1, **TINY).eval()
    torch.nn.init.zeros_(model.classifier.weight)
    for method in METHODS:
        maps = CamExplainer(model, method)(torch.rand(2, 1, SIZE, SIZE))
        assert np.array_equal(maps, np.zeros_like(maps))


def test_gradcampp_survives_large_logits():
    # exp(score) in Grad-CAM++ overflows above ~88; MONAI alone returns NaN here
    model = create_model("covidnet-cxr3b", num_classes=2, in_channels=1, **TINY).eval()
    with torch.no_grad():
        model.classifier.weight.mul_(1e5)
        assert model(torch.rand(1, 1, SIZE, SIZE)).abs().max() > 100
    maps = CamExplainer(model, "gradcam++")(torch.rand(2, 1, SIZE, SIZE), class_idx=1)
    assert np.isfinite(maps).all() and maps.max() == pytest.approx(1.0)


def test_one_class_per_image_matches_one_image_at_a_time():
    # MONAI alone would score logits[:, [0, 1]] (a 2x2 block) and mix the two images' classes
    model = _model("covidnet-cxr3b")
    x = torch.rand(2, 1, SIZE, SIZE)
    explain = CamExplainer(model)
    both = explain(x, class_idx=[0, 1])
    np.testing.assert_allclose(both[0], explain(x[:1], class_idx=0)[0], atol=1e-5)
    np.testing.assert_allclose(both[1], explain(x[1:], class_idx=1)[0], atol=1e-5)
    predicted = model(x).argmax(1).tolist()
    np.testing.assert_allclose(explain(x), explain(x, class_idx=predicted), atol=1e-6)


def test_model_is_left_as_found():
    model = create_model("mobilenet_v3_large", num_classes=3, in_channels=1).eval()  # its own: we change it
    layer = model.cam_layer
    x = torch.rand(2, 1, SIZE, SIZE)
    with torch.no_grad():
        before = model(x)
    model.classifier.weight.grad = torch.ones_like(model.classifier.weight)
    model.classifier.weight.requires_grad_(False)
    n_hooks = _hooks(layer)
    for method in METHODS:
        CamExplainer(model, method)(x)
    assert _hooks(layer) == n_hooks == 0
    assert not model.training
    assert torch.equal(model.classifier.weight.grad, torch.ones_like(model.classifier.weight))
    assert not model.classifier.weight.requires_grad
    assert all(p.requires_grad for n, p in model.named_parameters() if not n.startswith("classifier."))
    with torch.no_grad():
        assert torch.equal(model(x), before)


def test_training_flag_is_restored():
    model = _model("covidnet-cxr3b").train()
    try:
        CamExplainer(model)(torch.rand(2, 1, SIZE, SIZE))
        assert model.training
    finally:
        model.eval()


def _squares(g: torch.Generator, n: int, size: int, side: int, label: int | None = None):
    """Noise images; class 1 has a bright ``side`` x ``side`` square at a random place, class 0 none."""
    x = torch.rand(n, 1, size, size, generator=g) * 0.3
    y = torch.randint(0, 2, (n,), generator=g) if label is None else torch.full((n,), label)
    boxes = []
    for i in range(n):
        r, c = torch.randint(0, size - side + 1, (2,), generator=g).tolist()
        boxes.append((r, c))
        if y[i]:
            x[i, 0, r : r + side, c : c + side] = 1.0
    return x, y, boxes


def test_known_answer_gradcam_finds_the_square():
    # 96 px: the last stage is 3x3 (2x2 at 64 px is too coarse to localise a square honestly)
    size, side = 96, 16
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = create_model("covidnet-cxr3b", num_classes=2, in_channels=1, **TINY)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x_val, y_val, _ = _squares(g, 64, size, side)
    acc = 0.0
    for step in range(1, 151):
        model.train()
        x, y, _ = _squares(g, 16, size, side)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step >= 60 and step % 10 == 0:
            model.eval()
            with torch.no_grad():
                acc = (model(x_val).argmax(1) == y_val).float().mean().item()
            if acc > 0.9:
                break
    assert acc > 0.9, f"the tiny COVID-Net did not learn the squares (held-out accuracy {acc:.2f})"

    model.eval()
    x, _, boxes = _squares(g, 8, size, side, label=1)
    for method in METHODS:
        heat = CamExplainer(model, method)(x, class_idx=1)
        ratios = []
        for h, (r, c) in zip(heat, boxes):
            inside = np.zeros(h.shape, bool)
            inside[r : r + side, c : c + side] = True
            ratios.append(h[inside].mean() / max(h[~inside].mean(), 1e-6))
        assert np.mean(ratios) > 2.0, (method, np.round(ratios, 2))
        assert np.median(ratios) > 2.0, (method, np.round(ratios, 2))


def test_overlay_shape_and_zero_heat():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 50), dtype=np.uint8)
    out = overlay(image, np.zeros((40, 50)), alpha=0.4)
    assert out.shape == (40, 50, 3) and out.dtype == np.uint8
    # 'jet' at 0 is (0, 0, 0.5): red and green are the grey image at (1 - alpha), blue is lifted evenly
    expected = 0.6 * image.astype(float)
    assert np.abs(out[..., 0] - expected).max() <= 1
    assert np.abs(out[..., 1] - expected).max() <= 1
    assert np.corrcoef(out[..., 2].ravel(), image.ravel())[0, 1] > 0.99


def test_overlay_resizes_heat_and_shows_it():
    image = np.full((64, 64), 128, np.uint8)
    heat = np.zeros((4, 4), np.float32)
    heat[0, 0] = 1.0
    out = overlay(image, heat, alpha=0.5)
    assert out.shape == (64, 64, 3)
    # hot (jet: red) in the top-left corner, cold (jet: blue) in the bottom-right one
    assert out[0, 0, 0] > out[0, 0, 2]
    assert out[-1, -1, 2] > out[-1, -1, 0]


def test_save_overlay_writes_png(tmp_path):
    image = np.zeros((32, 32), np.uint8)
    path = save_overlay(tmp_path / "cam.png", image, np.ones((8, 8)))
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == (32, 32) and im.mode == "RGB"


def test_bad_input():
    model = _model("covidnet-cxr3b")
    with pytest.raises(ConfigError, match="gradcam, gradcam\\+\\+") as e:
        CamExplainer(model, "saliency")
    assert "\n" not in str(e.value)
    explain = CamExplainer(model)
    x = torch.rand(2, 1, SIZE, SIZE)
    for bad in (3, -1, [0, 3]):
        with pytest.raises(ConfigError, match="out of range"):
            explain(x, class_idx=bad)
    with pytest.raises(ConfigError, match="entries"):
        explain(x, class_idx=[0, 1, 2])
    with pytest.raises(ConfigError):
        overlay(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8)))
