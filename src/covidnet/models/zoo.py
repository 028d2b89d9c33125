"""The paper's baselines and two widely used chest X-ray networks, from torchvision, behind the same
interface as COVID-Net (``forward_features`` / ``forward_head`` / ``get_classifier`` /
``reset_classifier`` / ``cam_layer``), so that training, CAMs and export treat every model alike.

The torchvision module is built first (with its own weights when asked) and then split into trunk,
head and classifier; the modules are shared, not copied, so torchvision's weights carry over.
"""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from .base import Classifier


def adapt_input_conv(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """Return ``conv`` taking ``in_channels`` inputs. For 1 channel the RGB filters are summed, so an
    ImageNet-pretrained filter gives the same response to a grey image as to its 3-channel copy
    (the approach of timm's ``adapt_input_conv``)."""
    if conv.in_channels == in_channels:
        return conv
    if in_channels != 1 or conv.in_channels != 3:
        raise ValueError(f"can only adapt a 3-channel convolution to 1 channel, not {conv.in_channels}->{in_channels}")
    new = nn.Conv2d(
        1,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
    )
    with torch.no_grad():
        new.weight.copy_(conv.weight.sum(dim=1, keepdim=True))
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    return new


class TorchvisionNet(Classifier):
    """A torchvision classifier split into ``features`` (to the last feature map), ``head`` (pooling
    and every layer before the last linear one) and ``classifier`` (the last linear layer)."""

    def __init__(
        self,
        features: nn.Module,
        head: nn.Sequential,
        classifier: nn.Linear,
        num_features: int,
        num_classes: int,
        in_channels: int,
    ):
        super().__init__()
        self.num_features = num_features  # channels of the feature map (timm's meaning), not of the pre-logits
        self.features = features
        self.head = head
        self.classifier = classifier
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.reset_classifier(num_classes)

    @property
    def cam_layer(self) -> nn.Module:
        return self.features[-1]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def _weights(builder, weights):
    """torchvision weights enum for ``weights``: None, or 'imagenet' for the builder's default."""
    if weights is None:
        return None
    if weights == "imagenet":
        return torchvision.models.get_model_weights(builder).DEFAULT
    raise ValueError(f"unknown weights {weights!r}: use None or 'imagenet'")


def resnet50(num_classes: int = 3, in_channels: int = 3, weights: str | None = None) -> TorchvisionNet:
    m = torchvision.models.resnet50(weights=_weights(torchvision.models.resnet50, weights))
    m.conv1 = adapt_input_conv(m.conv1, in_channels)
    features = nn.Sequential(m.conv1, m.bn1, m.relu, m.maxpool, m.layer1, m.layer2, m.layer3, m.layer4)
    return TorchvisionNet(features, nn.Sequential(m.avgpool, nn.Flatten()), m.fc, 2048, num_classes, in_channels)


def vgg19(num_classes: int = 3, in_channels: int = 3, weights: str | None = None) -> TorchvisionNet:
    m = torchvision.models.vgg19(weights=_weights(torchvision.models.vgg19, weights))
    m.features[0] = adapt_input_conv(m.features[0], in_channels)
    head = nn.Sequential(m.avgpool, nn.Flatten(), *m.classifier[:-1])
    return TorchvisionNet(m.features, head, m.classifier[-1], 512, num_classes, in_channels)


def densenet121(num_classes: int = 3, in_channels: int = 3, weights: str | None = None) -> TorchvisionNet:
    m = torchvision.models.densenet121(weights=_weights(torchvision.models.densenet121, weights))
    m.features.conv0 = adapt_input_conv(m.features.conv0, in_channels)
    # torchvision applies the final ReLU in forward(); here it closes the trunk, so CAMs see it
    features = nn.Sequential(m.features, nn.ReLU(inplace=False))
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return TorchvisionNet(features, head, m.classifier, 1024, num_classes, in_channels)


def mobilenet_v3_large(num_classes: int = 3, in_channels: int = 3, weights: str | None = None) -> TorchvisionNet:
    m = torchvision.models.mobilenet_v3_large(weights=_weights(torchvision.models.mobilenet_v3_large, weights))
    m.features[0][0] = adapt_input_conv(m.features[0][0], in_channels)
    head = nn.Sequential(m.avgpool, nn.Flatten(), *m.classifier[:-1])
    return TorchvisionNet(m.features, head, m.classifier[-1], 960, num_classes, in_channels)
