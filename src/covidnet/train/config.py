"""``TrainConfig``: every setting of ``covidnet train``, one flag a field, written to every run's config.json.

Most settings are every task's (the loop's, the optimiser's, the augmentation's, where the run goes). A task
adds its own (``Task.options``: ``--binary`` and ``--debias`` are classification's, ``--dice-weight``
segmentation's); another task refuses them in one line when they are given. A few defaults are the task's
(``Task.defaults``: a segmenter learns at 1e-3 for 40 epochs, a classifier at the paper's 2e-5 for 10): those
fields are None until the config is made, and then hold the task's value, so config.json always says what
ran. The paper's recipe is classification's default: Adam, learning rate 2e-5, 10 epochs, batch 8,
ReduceLROnPlateau (factor 0.7, patience 5) on the validation loss, 480 px, translation ±10 %, rotation ±10°,
horizontal flip, brightness ±10 %, zoom 0.85-1.15; and the reference's rebalancing (30 % of each batch
COVID-19, COVID-19 weighted 4 in the loss).
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass

from ..augment import AugmentConfig
from ..config import option
from ..contract import LUNG_FIELDS, LUNG_MARGIN
from ..errors import ConfigError
from ..models import get_spec, list_models
from ..tasks import COMMON_OPTIONS, TASKS, Task, make_task, task_class
from ..tasks.moco import QUEUE as MOCO_QUEUE
from ..tasks.selfsup import METHODS as SSL_METHODS

OPTIMIZERS = ("adam", "sgd")

# a field whose default is the task's is None until the config is made; where a task sets none, this
NEUTRAL = {"covid_percent": 0.0, "class_weights": "none", "hflip": 0.5, "brightness": 0.10, "aug_gamma": 0.0,
           "aug_blur": 0.0, "aug_noise": 0.0}  # fmt: skip


def _per_task(field: str) -> str:
    """The help's note on a default that is the task's, e.g. "default 2e-05; segmentation 0.001"."""
    from collections import Counter

    values = {name: t.defaults.get(field, NEUTRAL.get(field)) for name, t in TASKS.items()}
    common = Counter(v for v in values.values() if v is not None).most_common(1)[0][0]
    others = [f"{n} {v}" for n, v in values.items() if v is not None and v != common]
    return f"default {common}" + (f"; {', '.join(others)}" if others else "")


@dataclass
class TrainConfig:
    data: str = option(help="a dataset folder written by `covidnet data build`")
    out: str = option(help="run folder: config, log.csv, last.pt, best.pt, run.json", may_change_on_resume=True)
    task: str = option(
        "classification",
        "classification; severity (COVIDNet-S geographic and opacity extent, 0-8; needs a build with --severity); "
        "risk (COVID-RiskNet: COVID-19 images in bins of days since symptom onset); segmentation (the lung fields; "
        "needs a build with --lung-masks; also `covidnet lungs train`)",
    )
    arch: str | None = option(None, f"architecture (see `covidnet models`; {_per_task('arch')})")
    epochs: int | None = option(None, f"epochs ({_per_task('epochs')})", may_change_on_resume=True)
    batch_size: int = option(8, "images per step, over all processes together")
    lr: float | None = option(None, f"learning rate ({_per_task('lr')})")
    scale_lr: bool = option(False, "multiply --lr by batch-size/8 (linear rule for larger batches)")
    optimizer: str = option(
        "adam", "adam; or sgd, with momentum 0.9 (SimSiam's own recipe: --lr 0.05 x batch/256, --weight-decay 1e-4)"
    )
    weight_decay: float = option(0.0, "the optimiser's weight decay")
    plateau_factor: float | None = option(
        None, f"ReduceLROnPlateau factor on the monitored validation figure ({_per_task('plateau_factor')})"
    )
    plateau_patience: int = option(5, "ReduceLROnPlateau patience (epochs)")
    size: int = option(0, "input side in px; 0: the dataset's stored size")
    in_channels: int = option(1, "1 (grey) or 3 (grey repeated)")  # 3: e.g. ImageNet weights without adaptation
    binary: bool = option(False, "negative/positive instead of normal/pneumonia/COVID-19")
    covid_percent: float | None = option(
        None,
        f"share of each batch drawn from COVID-19, in [0, 1); 0 turns rebalancing off ({_per_task('covid_percent')})",
    )
    class_weights: str | None = option(
        None,
        "loss weights: reference (COVID-19 x4), none, balanced, or one number per class (e.g. 1,1,4) "
        f"({_per_task('class_weights')})",
    )
    translate: float | None = option(None, f"augmentation: max shift, fraction of the side ({_per_task('translate')})")
    rotate: float = option(10.0, "augmentation: max rotation, degrees")
    hflip: float | None = option(None, f"augmentation: horizontal flip probability ({_per_task('hflip')})")
    brightness: float | None = option(
        None, f"augmentation: max brightness change, fraction (the image only) ({_per_task('brightness')})"
    )
    zoom_min: float | None = option(None, f"augmentation: smallest zoom ({_per_task('zoom_min')})")
    zoom_max: float | None = option(None, f"augmentation: largest zoom ({_per_task('zoom_max')})")
    intensity: str = option(
        "none",
        "per-image intensity standardisation of the stored pixels before the model: none, equalize (histogram "
        "equalisation) or clahe; recorded in the checkpoint's contract, applied by eval, predict, serve and export",
        choices=("none", "equalize", "clahe"),
    )
    lungs: str = option(
        "none",
        "lung-field input: crop (the lung bounding box plus --lung-margin, squared) or mask (pixels outside the "
        "dilated lung mask set to their mean), by a lung segmenter carried inside the model (--lung-model)",
        choices=LUNG_FIELDS,
    )
    lung_model: str = option(
        "",
        "--lungs crop|mask: a segmentation checkpoint (best.pt of `covidnet train --task segmentation`); default: "
        "the one the dataset was built with (data build --lungs)",
    )
    lung_margin: float = option(LUNG_MARGIN, "--lungs crop|mask: the lung mask's dilation, share of the side")
    debias: str = option(
        "none",
        "source: conditional source-adversarial training (an adversary predicts the source from the pooled features "
        "within each class, through gradient reversal)",
        choices=("none", "source"),
    )
    debias_weight: float = option(0.1, "--debias source: the gradient-reversal weight")
    balance_sources: bool = option(
        False,
        "draw each class's images so that every source of the class is drawn equally often (with replacement); "
        "the class mix is unchanged",
    )
    balance_temper: float = option(
        1.0,
        "--balance-sources: draw each image with weight (its class-and-source group's size)^-this within its "
        "class; 1 draws every source of a class equally often, 0 the natural mix, between them tempered balancing",
    )
    group_dro: bool = option(
        False,
        "group DRO (Sagawa et al. 2020): minimise the worst (class, source) group's loss, with online group "
        "weights and the group-size adjustment (give --class-weights none)",
    )
    dro_step: float = option(0.01, "--group-dro: the step (eta) of the online group weights")
    dro_adjustment: float = option(
        1.0, "--group-dro: C of the group-size adjustment C / sqrt(group size) added to each group's loss"
    )
    images: list[str] = option(
        default_factory=list,
        flag="--images",
        metavar="DIR",
        help="--task self-supervised: a folder of unlabelled films (any depth; PNG, JPEG, WebP, DICOM) to pretrain on "
        "beside the build's training split, read through its contract; repeat the flag for more",
    )
    ssl_method: str = option(
        "simsiam",
        "--task self-supervised: simsiam (Chen & He 2021: no negatives, no momentum encoder), moco (MoCo v2, "
        f"as MoCo-CXR: a momentum key encoder and a queue of {MOCO_QUEUE} negatives) or simclr (SimCLR: the "
        "batch's other images as negatives)",
        choices=tuple(SSL_METHODS),
    )
    label_fraction: float = option(
        1.0,
        "train on the labels of this share of the training split's patients, drawn by patient and stratified by "
        "class, the same patients in every run (validation and test splits whole)",
    )
    aug_gamma: float | None = option(
        None,
        f"acquisition augmentation: gamma curve, |log gamma| at most this per image, 0 off ({_per_task('aug_gamma')})",
    )
    aug_blur: float | None = option(
        None, f"acquisition augmentation: Gaussian blur, sigma up to this many pixels, 0 off ({_per_task('aug_blur')})"
    )
    aug_noise: float | None = option(
        None,
        f"acquisition augmentation: additive noise, std up to this on [0, 1] pixels, 0 off ({_per_task('aug_noise')})",
    )
    init: str = option(
        "random",
        "random; imagenet (efficientnet-lite0 offline from 'covidnet[pretrained]', the torchvision baselines by "
        "download); mean-var (random weights with the ImageNet weights' per-tensor mean and std, Raghu et al. "
        "2019); or a checkpoint path; the classifier starts afresh",
    )
    seed: int = option(0, "seed of every random choice")
    device: str = option("auto", "auto, cpu, cuda or cuda:N")  # auto: cuda if available, else cpu
    amp: bool = option(True, "bf16 autocast on GPU")  # never on CPU
    channels_last: bool = option(True, "channels-last memory format")
    compile: str = option("auto", "torch.compile: auto (GPU only), on, off")
    eval_batch_size: int | None = option(None, f"batch size for validation ({_per_task('eval_batch_size')})")
    host_memory_gb: float = option(
        0.0,
        "host memory the training and validation images (and masks) may take; above it they are streamed from the "
        "store (0: half of the memory available at the start)",
        may_change_on_resume=True,
    )
    max_steps: int = option(
        0,
        "end the run after this many optimisation steps, mid-epoch if need be (0: no limit)",
        may_change_on_resume=True,
    )
    precise_bn: int | None = option(
        None,
        "training images (unaugmented) that recompute BatchNorm statistics before each validation; 0: off "
        f"({_per_task('precise_bn')})",
    )
    resume: bool = option(False, "continue the run in --out from its last.pt", may_change_on_resume=True)
    progress: bool = option(True, "progress bars and per-epoch lines", may_change_on_resume=True)
    freeze_backbone: bool = option(
        False, "train only the head on the frozen features of --init (COVIDNet-S's setting)"
    )  # the head: pooling, hidden layers, last layer
    risk_bins: str = option(
        "3,5,10", "--task risk: inner bin edges in days, e.g. 3,5,10 for [0-3), [3-5), [5-10), >=10"
    )
    dice_weight: float = option(1.0, "--task segmentation: weight of the soft Dice term beside the cross-entropy")

    def __post_init__(self):
        t = task_class(self.task)
        for f in dataclasses.fields(self):
            if getattr(self, f.name) is None:
                setattr(self, f.name, t.defaults.get(f.name, NEUTRAL.get(f.name)))
        given = [f for f in dataclasses.fields(self) if f.name not in COMMON_OPTIONS and f.name not in t.options]
        for f in given:
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default
            if getattr(self, f.name) != NEUTRAL.get(f.name, default):
                raise ConfigError(
                    f"--{f.name.replace('_', '-')} is not a setting of --task {self.task} (it takes "
                    f"{', '.join('--' + o.replace('_', '-') for o in t.options) or 'only the common settings'})"
                )

    def to_dict(self) -> dict:
        return asdict(self)

    def make_task(self) -> Task:
        return make_task(self)

    @property
    def augment(self) -> AugmentConfig:
        return AugmentConfig(
            self.translate,
            self.rotate,
            self.hflip,
            self.brightness,
            (self.zoom_min, self.zoom_max),
            self.aug_gamma,
            self.aug_blur,
            self.aug_noise,
        )

    def effective_lr(self) -> float:
        return self.lr * self.batch_size / 8 if self.scale_lr else self.lr

    def check(self) -> Task:
        """What is refused before anything is read: the settings alone. Returns the task."""
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or self.eval_batch_size < 1:
            raise ConfigError("--epochs, --batch-size, --eval-batch-size and --lr must be positive")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, not {self.optimizer!r}")
        if self.in_channels not in (1, 3):
            raise ConfigError(f"--in-channels must be 1 or 3, not {self.in_channels}")
        if self.compile not in ("auto", "on", "off"):
            raise ConfigError(f"--compile must be auto, on or off, not {self.compile!r}")
        if min(self.aug_gamma, self.aug_blur, self.aug_noise) < 0:
            raise ConfigError("--aug-gamma, --aug-blur and --aug-noise must be >= 0 (0: off)")
        if not self.zoom_min <= self.zoom_max or self.zoom_min <= 0:
            raise ConfigError("--zoom-min must be positive and at most --zoom-max")
        if self.freeze_backbone and self.init == "random":
            raise ConfigError(
                "--freeze-backbone needs trained features: give --init CHECKPOINT (or imagenet for "
                "efficientnet-lite0 and the torchvision baselines)"
            )
        kind, task = get_spec(self.arch).kind, task_class(self.task)
        if kind != task.kind:
            raise ConfigError(
                f"--arch {self.arch} is a {kind}; --task {self.task} takes a {task.kind}: "
                f"{', '.join(list_models(task.kind))}"
            )
        return self.make_task()  # a malformed task option (--risk-bins, --class-weights, …) fails here
