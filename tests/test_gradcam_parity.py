"""Our CAMs (``covidnet.explain.CamExplainer``, on MONAI) against an implementation no one here wrote:
jacobgil's ``pytorch-grad-cam`` (PyPI ``grad-cam``, a dev dependency), on the same model, input, class
and target layer, for a COVID-Net and a torchvision baseline of the registry.

What is made the same on both sides, and why the comparison is fair:

* **Target layer**: theirs is handed the very module ours uses, ``target_layer_name(model)``.
* **Class**: ours scores ``logits[i, class_idx[i]]`` per image; theirs gets one
  ``ClassifierOutputTarget`` per image with the same index (and, for ``None``, both take the argmax).
* **ReLU**: both apply it to the weighted sum of the feature maps (MONAI's ``compute_map``,
  pytorch-grad-cam's ``compute_cam_per_layer``), so an all-negative map is all zero on both sides.
* **Upsampling**: both maps come back at the input's height and width, resampled bilinearly with the
  half-pixel convention (MONAI: ``F.interpolate(mode="bilinear", align_corners=False)``; theirs:
  ``cv2.resize`` with ``INTER_LINEAR``), so no further resampling is done here.
* **Normalisation**: MONAI upsamples and then normalises (ours scales to [0, 1]); theirs normalises
  to [0, 1] and then upsamples. Bilinear upsampling commutes with an affine rescale, and the Pearson
  correlation ignores one anyway; on top of that the same min-max normalisation is applied to both.

Grad-CAM++ is not the same formula on both sides. The paper's eq. 19 (Chattopadhyay et al. 2018),
which pytorch-grad-cam follows, has ``alpha_ij = g_ij^2 / (2 g_ij^2 + g_ij^3 * sum_ab A_ab)``; MONAI
(1.x) computes the denominator as ``2 g_ij^2 + sum_ab (A_ab * g_ab^3)``, one number per channel.
The epsilons differ too (1e-7 against 1e-6). The maps still agree to r >= 0.99 on these models and
inputs (measured 0.997-0.9999), so the same threshold is asserted, but a drop there is MONAI's formula
first, not our glue.

Models are untrained (seeded He initialisation) and in eval mode: Grad-CAM is a function of the
weights whatever they are, and parity does not need them to be good. The negative control shows
that the 0.99 threshold separates a wrong answer (the layer before the target) from a right one.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from covidnet.data.synth import draw_radiograph
from covidnet.explain import CamExplainer, target_layer_name
from covidnet.models import create_model

SIZE = 128  # the last feature map is 4 x 4: coarse, but enough to tell a map from another
MIN_R = 0.99
ARCHS = {"covidnet-cxr3b": 1, "resnet50": 3}  # name -> in_channels: grey for ours, RGB for torchvision's
THEIRS = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus}

_MODELS: dict[str, torch.nn.Module] = {}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: on a shared 2-core machine oversubscribed threads make CAMs much slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model(name: str) -> torch.nn.Module:
    if name not in _MODELS:
        torch.manual_seed(0)
        _MODELS[name] = create_model(name, num_classes=3, in_channels=ARCHS[name]).eval()
    return _MODELS[name]


def _inputs(in_channels: int) -> torch.Tensor:
    """Two phantom radiographs (normal, COVID-19) as a (2, C, SIZE, SIZE) normalised batch. The exact
    normalisation does not matter for parity (both sides see the same tensor); mean 0.5, std 0.25
    keeps it near the registry's grey contract."""
    rng = np.random.default_rng(0)
    images = np.stack([draw_radiograph(rng, 160, label)[0] for label in ("normal", "COVID-19")])
    x = torch.from_numpy(images).float()[:, None] / 255.0
    x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", antialias=True, align_corners=False)
    return ((x - 0.5) / 0.25).expand(-1, in_channels, -1, -1).contiguous()


def _minmax(cam: np.ndarray) -> np.ndarray:
    """The same normalisation for both: each map to [0, 1]; a constant map stays constant (zeros)."""
    flat = cam.reshape(cam.shape[0], -1).astype(np.float64)
    lo, hi = flat.min(1, keepdims=True), flat.max(1, keepdims=True)
    return np.where(hi > lo, (flat - lo) / np.where(hi > lo, hi - lo, 1.0), 0.0)


def _theirs(model, layer_name, method, x, class_idx) -> np.ndarray:
    layer = dict(model.named_modules())[layer_name]
    targets = None if class_idx is None else [ClassifierOutputTarget(int(c)) for c in class_idx]
    with THEIRS[method](model=model, target_layers=[layer]) as cam:  # the context removes its hooks
        return cam(input_tensor=x, targets=targets)


def _parity(name: str, method: str, layer_name: str | None = None) -> list[tuple]:
    """(class_idx, image, ours, theirs, r) for every class of every image, plus per-image classes and
    the predicted class. ``layer_name`` overrides *their* target layer only (the negative control)."""
    model = _model(name)
    x = _inputs(ARCHS[name])
    ours_layer = target_layer_name(model)
    theirs_layer = layer_name or ours_layer
    explainer = CamExplainer(model, method)
    cases = [[c, c] for c in range(model.num_classes)] + [[0, 2], None]
    out = []
    for class_idx in cases:
        ours = explainer(x, class_idx=class_idx)
        theirs = _theirs(model, theirs_layer, method, x, class_idx)
        assert ours.shape == theirs.shape == (2, SIZE, SIZE)
        a, b = _minmax(ours), _minmax(theirs)
        for i in range(2):
            constant = a[i].max() == a[i].min() or b[i].max() == b[i].min()
            r = float("nan") if constant else float(np.corrcoef(a[i], b[i])[0, 1])
            out.append((class_idx, i, a[i], b[i], r))
    return out


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
@pytest.mark.parametrize("name", list(ARCHS))
def test_cam_matches_pytorch_grad_cam(name, method):
    rows = _parity(name, method)
    informative = 0
    for class_idx, i, a, b, r in rows:
        if np.isnan(r):
            # a ReLU that kills the whole map (every weighted sum negative) must do so on both sides
            assert np.all(a == 0) and np.all(b == 0), (
                f"{name} {method} class {class_idx} image {i}: one map is constant and the other is not"
            )
            continue
        informative += 1
        assert r >= MIN_R, f"{name} {method} class {class_idx} image {i}: Pearson r {r:.4f} < {MIN_R}"
    # most maps must carry something, or the agreement above would be of zeros with zeros
    assert informative >= len(rows) // 2, f"{name} {method}: only {informative} of {len(rows)} maps are not constant"


@pytest.mark.parametrize("name", list(ARCHS))
def test_parity_threshold_rejects_the_wrong_layer(name):
    """Negative control: theirs at the stage before our target layer is a different map, and the
    test's threshold says so for every map (measured r 0.18-0.88), so passing is not a formality."""
    model = _model(name)
    layer = target_layer_name(model)
    parent, last = layer.rsplit(".", 1)
    rows = _parity(name, "gradcam", layer_name=f"{parent}.{int(last) - 1}")
    rs = [r for *_, r in rows if not np.isnan(r)]
    assert rs and max(rs) < MIN_R, f"{name}: theirs at the wrong layer reached r {max(rs):.4f}"
