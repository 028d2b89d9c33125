"""COVID-Net in PyTorch: PEPX modules, long-range connectivity, and the published presets.

Read top to bottom: the layers, the PEPX module, a stage, the config, the network, the presets.

What is published and what is ours
----------------------------------
Published (Wang, Lin & Wong, *Scientific Reports* 10:19549, 2020, Fig. 2 and Table 1; the reference
repository's ``docs/models.md``):

* the **PEPX** module: a first-stage 1x1 *projection* to fewer channels, a 1x1 *expansion* to more
  channels (a number different from the input's), a 3x3 *depth-wise* convolution, a second-stage 1x1
  *projection*, and a 1x1 *extension* to the module's output width;
* a 7x7 convolution stem; four stages of 3, 4, 6 and 3 PEPX modules; at a 224x224 input the stages
  work at 56, 28, 14 and 7 px;
* **selective long-range connectivity**: each PEPX module feeds the later modules of its stage and the
  next stage, and a 1x1 convolution path runs beside the modules of each stage;
* flatten, then a fully-connected head, softmax over normal / pneumonia / COVID-19;
* complexity: COVIDNet-CXR Small 117.4 M parameters / 2.26 G MACs and Large 127.4 M / 3.59 G at
  224x224; COVIDNet-CXR3-B 11.75 M / 7.50 G at 480x480.

Not published, so chosen here (the reference ships TensorFlow graphs, not code):

* **Channel widths and PEPX internal widths** (``CovidNetConfig``): chosen so that each preset lands
  within 10 % of its published parameters and MACs (``tests/models/test_complexity.py`` holds us to
  it). Internal widths are a projection ratio and an expansion ratio of the module's output width.
* **Merge operation: element-wise sum.** The input of module *k* of a stage is the sum of the stage's
  1x1 path and the outputs of modules 1..k-1; the first module reads the stage input; the stage
  output (the next stage's input) is the sum of the 1x1 path and every module's output. Sums keep the
  width fixed within a stage, which is what makes the parameter counts of the presets reachable
  (concatenation would grow the width with every connection).
* **Downsampling**: the stem is a stride-2 7x7 convolution and a stride-2 3x3 max-pool (224 -> 56);
  stages 2-4 open with a 2x2 max-pool of the previous stage's output (56 -> 28 -> 14 -> 7).
* **Normalisation**: every convolution is followed by batch normalisation and ReLU, except the
  extension, which is linear (batch normalisation only) with its scale initialised to zero, so every
  PEPX module starts as "add nothing" to the sum it feeds — ResNet's zero-initialised residual
  (Goyal et al. 2017). Without it the summed network did not train from scratch at batch 8 in our
  tests (training loss stuck at chance on phantom data where ResNet-50 reached 100 %); with it the
  same run fits the training set within a few epochs.
* **Head**: an adaptive average pool to ``head_grid`` x ``head_grid`` before the flatten. At the
  preset's own input size and ``head_grid=7`` (Small, Large at 224) it is the identity, so the head is
  the published flatten -> FC; it also lets the same weights run at other sizes. CXR3-B uses
  ``head_grid=1`` (global average pooling): a 15x15 flatten at 480 px would not fit an 11.75 M budget.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from .base import Classifier


def _divisible(v: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of ``divisor`` (hardware-friendly, as in MobileNet)."""
    return max(divisor, int(v + divisor / 2) // divisor * divisor)


class ConvBNReLU(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, k: int = 1, stride: int = 1, groups: int = 1, act: bool = True):
        super().__init__(
            nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2, groups=groups, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True) if act else nn.Identity(),
        )


class PEPX(nn.Module):
    """Projection - Expansion - Projection - eXtension, with a depth-wise 3x3 in the middle."""

    def __init__(self, c_in: int, c_out: int, c_proj: int, c_expand: int):
        super().__init__()
        self.project1 = ConvBNReLU(c_in, c_proj, 1)
        self.expand = ConvBNReLU(c_proj, c_expand, 1)
        self.depthwise = ConvBNReLU(c_expand, c_expand, 3, groups=c_expand)
        self.project2 = ConvBNReLU(c_expand, c_proj, 1)
        self.extend = ConvBNReLU(c_proj, c_out, 1, act=False)  # linear: its output is summed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.extend(self.project2(self.depthwise(self.expand(self.project1(x)))))


class Stage(nn.Module):
    """A stage of PEPX modules, densely connected by sums, with a 1x1 convolution path beside them."""

    def __init__(self, c_in: int, c_out: int, depth: int, c_proj: int, c_expand: int, downsample: bool):
        super().__init__()
        self.pool = nn.MaxPool2d(2) if downsample else nn.Identity()
        self.path = ConvBNReLU(c_in, c_out, 1)
        self.blocks = nn.ModuleList(PEPX(c_in if i == 0 else c_out, c_out, c_proj, c_expand) for i in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(x)
        total = self.path(x)
        for i, block in enumerate(self.blocks):
            # module 1 reads the stage input; module k reads the 1x1 path plus modules 1..k-1
            total = total + block(x if i == 0 else total)
        return total  # the 1x1 path plus every module: feeds the next stage


@dataclass(frozen=True)
class CovidNetConfig:
    """Every architectural number of a COVID-Net variant. Stored in checkpoints as a dict."""

    widths: tuple[int, ...] = (256, 512, 1024, 2048)
    depths: tuple[int, ...] = (3, 4, 6, 3)
    stem_channels: int = 64
    proj_ratio: float = 0.25  # first- and second-stage projection width / module output width
    expand_ratio: float = 0.5  # expansion (and depth-wise) width / module output width
    head_grid: int = 7  # adaptive average pool to head_grid x head_grid, then flatten
    head_hidden: tuple[int, ...] = (1024, 256)  # hidden fully-connected layers before the classifier
    dropout: float = 0.0

    def __post_init__(self):
        if len(self.widths) != len(self.depths):
            raise ValueError("widths and depths must have one entry per stage")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> CovidNetConfig:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


class CovidNet(Classifier):
    """COVID-Net, with the registry's uniform interface (``models/base.py``); its ``cam_layer`` is
    the last stage."""

    def __init__(self, config: CovidNetConfig = CovidNetConfig(), num_classes: int = 3, in_channels: int = 3):
        super().__init__()
        self.config = config
        self.num_classes = num_classes
        self.in_channels = in_channels
        c = config
        self.stem = nn.Sequential(
            ConvBNReLU(in_channels, c.stem_channels, 7, stride=2),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        stages, c_in = [], c.stem_channels
        for i, (w, d) in enumerate(zip(c.widths, c.depths)):
            stages.append(Stage(c_in, w, d, _divisible(w * c.proj_ratio), _divisible(w * c.expand_ratio), i > 0))
            c_in = w
        self.stages = nn.Sequential(*stages)
        self.num_features = c_in
        layers: list[nn.Module] = [nn.AdaptiveAvgPool2d(c.head_grid), nn.Flatten()]
        n = c_in * c.head_grid * c.head_grid
        for h in c.head_hidden:
            layers += [nn.Linear(n, h), nn.ReLU(inplace=True), nn.Dropout(c.dropout)]
            n = h
        self.head = nn.Sequential(*layers)
        self.classifier = nn.Linear(n, num_classes)
        self._init_weights()

    def _init_weights(self):
        # He initialisation for convolutions and hidden FC layers (they feed ReLUs); a small classifier
        # so the first logits are near uniform
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)
            if isinstance(m, PEPX):
                nn.init.zeros_(m.extend[1].weight)  # each module starts as the identity of the sum
        nn.init.trunc_normal_(self.classifier.weight, std=0.01)
        nn.init.zeros_(self.classifier.bias)

    @property
    def cam_layer(self) -> nn.Module:
        return self.stages[-1]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))


# The presets. Widths were found by a grid search over stage widths, projection and expansion ratios
# and head widths, scored by the larger of the relative errors to the published parameters and MACs.
# Small and Large share every width and differ only in the expansion ratio (Large expands further,
# which costs MACs at the high-resolution stages far more than parameters), as the published pair
# differs mostly in MACs. Measured (``covidnet profile --paper``):
#   Small  119.1 M / 2.25 G MACs at 224 (published 117.4 M / 2.26 G)
#   Large  129.8 M / 3.63 G MACs at 224 (published 127.4 M / 3.59 G)
#   CXR3-B  11.6 M / 7.69 G MACs at 480 (published 11.75 M / 7.50 G)
CXR_SMALL = CovidNetConfig(widths=(192, 384, 768, 2048), proj_ratio=0.25, expand_ratio=0.75)
CXR_LARGE = CovidNetConfig(widths=(192, 384, 768, 2048), proj_ratio=0.25, expand_ratio=2.0)
CXR3B = CovidNetConfig(
    widths=(192, 384, 768, 1536), proj_ratio=0.25, expand_ratio=0.5, head_grid=1, head_hidden=(1024, 256)
)
