"""``covidnet train``: the published COVID-Net recipe on a built dataset, from a laptop CPU to many GPUs.

One function, ``train(TrainConfig)``, runs unchanged as a single process or under ``torchrun`` (rank
from the environment; DistributedDataParallel over NCCL on GPUs, gloo on CPUs; logging and
checkpoints on rank 0). The dataset's preprocessed uint8 store is loaded once onto the device; batches
are drawn by index and augmented there, each image with its own random parameters. Every random
choice is derived from (seed, epoch, step), so a run killed at any step and resumed with ``--resume``
takes exactly the steps an uninterrupted run would have taken.

Defaults are the paper's: Adam, learning rate 2e-5, 10 epochs, batch 8, ReduceLROnPlateau (factor
0.7, patience 5) on the validation loss, 480 px, translation ±10 %, rotation ±10°, horizontal flip,
brightness ±10 %, zoom 0.85-1.15; and the reference's rebalancing (30 % of each batch COVID-19, COVID-19
weighted 4 in the loss). Model selection uses the validation split, never the test split.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from . import __version__
from .augment import AugmentConfig, augment, sample_params
from .checkpoint import read_checkpoint, save_checkpoint
from .config import option
from .contract import LUNG_FIELDS, LUNG_MARGIN, Contract
from .data.records import BINARY_CLASSES, CLASSES, positive_class
from .data.store import open_store
from .debias import Debiased, SourceAdversary, adversary_loss, source_index, source_targets
from .errors import ConfigError, CovidnetError
from .feed import InMemory, Streamed, memory_budget, prefetch, stage
from .files import write_json
from .lungs.field import classifier_of
from .lungs.segmenter import TASK as LUNGS_TASK
from .models import create_model, get_spec
from .runtime import predict_logits, resolve_device, uint8_to_unit
from .tasks import TASKS, Task, make_task

HEAD_MODULES = ("head", "classifier")  # what --freeze-backbone leaves trainable (every model has both)


class TrainingInterrupted(CovidnetError):
    """SIGTERM or SIGINT: a resumable checkpoint was written; exit 143 as a terminated process does."""

    exit_code = 143


@dataclass
class TrainConfig:
    data: str = option(help="a dataset folder written by `covidnet data build`")
    out: str = option(help="run folder: config, log.csv, last.pt, best.pt, run.json")
    arch: str = option("covidnet-cxr3b", "architecture (see `covidnet models`)")
    epochs: int = option(10, "epochs")
    batch_size: int = option(8, "images per step, over all processes together")
    lr: float = option(2e-5, "Adam learning rate")
    scale_lr: bool = option(False, "multiply --lr by batch-size/8 (linear rule for larger batches)")
    weight_decay: float = option(0.0, "Adam weight decay")
    plateau_factor: float = option(0.7, "ReduceLROnPlateau factor on the validation loss")
    plateau_patience: int = option(5, "ReduceLROnPlateau patience (epochs)")
    size: int = option(0, "input side in px; 0: the dataset's stored size")
    in_channels: int = option(1, "1 (grey) or 3 (grey repeated)")  # 3: e.g. ImageNet weights without adaptation
    binary: bool = option(False, "negative/positive instead of normal/pneumonia/COVID-19")
    covid_percent: float = option(0.3, "share of each batch drawn from COVID-19, in [0, 1); 0 turns rebalancing off")
    class_weights: str = option(
        "reference", "loss weights: reference (COVID-19 x4), none, balanced, or one number per class (e.g. 1,1,4)"
    )
    translate: float = option(0.10, "augmentation: max shift, fraction of the side")
    rotate: float = option(10.0, "augmentation: max rotation, degrees")
    hflip: float = option(0.5, "augmentation: horizontal flip probability")
    brightness: float = option(0.10, "augmentation: max brightness change, fraction")
    zoom_min: float = option(0.85, "augmentation: smallest zoom")
    zoom_max: float = option(1.15, "augmentation: largest zoom")
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
        "--lungs crop|mask: a `covidnet lungs train` best.pt; default: the one the dataset was built with "
        "(data build --lungs)",
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
    aug_gamma: float = option(0.0, "acquisition augmentation: gamma curve, |log gamma| at most this per image (0: off)")
    aug_blur: float = option(0.0, "acquisition augmentation: Gaussian blur, sigma up to this many pixels (0: off)")
    aug_noise: float = option(0.0, "acquisition augmentation: additive noise, std up to this on [0, 1] pixels (0: off)")
    init: str = option(
        "random", "random, imagenet (torchvision baselines), or a checkpoint path (classifier re-initialised)"
    )
    seed: int = option(0, "seed of every random choice")
    device: str = option("auto", "auto, cpu, cuda or cuda:N")  # auto: cuda if available, else cpu
    amp: bool = option(True, "bf16 autocast on GPU")  # never on CPU
    channels_last: bool = option(True, "channels-last memory format")
    compile: str = option("auto", "torch.compile: auto (GPU only), on, off")
    eval_batch_size: int = option(64, "batch size for validation")
    host_memory_gb: float = option(
        0.0,
        "host memory the training and validation images may take; above it they are streamed from the store "
        "(0: half of the memory available at the start)",
    )
    max_steps: int = option(0, "end the run after this many optimisation steps, mid-epoch if need be (0: no limit)")
    precise_bn: int = option(
        512, "training images (unaugmented) that recompute BatchNorm statistics before each validation; 0: off"
    )
    resume: bool = option(False, "continue the run in --out from its last.pt")
    progress: bool = option(True, "progress bars and per-epoch lines")
    task: str = option(
        "classification",
        "classification; severity (COVIDNet-S geographic and opacity extent, "
        "0-8; needs a build with --severity); risk (COVID-RiskNet: COVID-19 images in bins of days "
        "since symptom onset)",
    )
    freeze_backbone: bool = option(
        False, "train only the head on the frozen features of --init (COVIDNet-S's setting)"
    )  # the head: pooling, hidden layers, last layer
    risk_bins: str = option(
        "3,5,10", "--task risk: inner bin edges in days, e.g. 3,5,10 for [0-3), [3-5), [5-10), >=10"
    )

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def classes(self) -> tuple[str, ...]:
        return BINARY_CLASSES if self.binary else CLASSES

    def make_task(self) -> Task:
        return make_task(self.task, self.classes, self.risk_bins)

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


# --- distributed -------------------------------------------------------------------------------------


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> Dist:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        return cls(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))

    def all_sum(self, values: list[float], device) -> list[float]:
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=device)
        torch.distributed.all_reduce(t)
        return t.tolist()

    def gather(self, obj):
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out


# --- sampling ----------------------------------------------------------------------------------------


def step_seed(seed: int, epoch: int, step: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, step]).generate_state(1)[0])


def epoch_batches(
    labels: np.ndarray,
    epoch: int,
    seed: int,
    batch_size: int,
    covid_class: int | None,
    covid_percent: float,
    groups: np.ndarray | None = None,
) -> list[np.ndarray]:
    """The global batches of one epoch, as positions into ``labels`` (the training rows).

    Without rebalancing: a permutation cut into batches, so every image is seen exactly once per
    epoch; the remainder is spread over the batches rather than dropped or padded. With rebalancing:
    every non-COVID-19 image once, and ``round(covid_percent * batch_size)`` COVID-19 images per batch
    drawn from a cycling permutation of the COVID-19 images (oversampled, as in the reference).

    With ``groups`` (each image's source, ``--balance-sources``): as many images of each class as above,
    drawn with replacement so that within a class every source is drawn equally often."""
    rng = np.random.default_rng([seed, epoch, 0xBA7C4])
    n = len(labels)

    def draw(pos: np.ndarray, size: int) -> np.ndarray:
        if groups is None:  # each image once per pass, passes cycled
            return np.concatenate([rng.permutation(pos) for _ in range(math.ceil(size / len(pos)))])[:size]
        _, inverse, counts = np.unique(groups[pos], return_inverse=True, return_counts=True)
        w = 1.0 / counts[inverse]
        return rng.choice(pos, size=size, replace=True, p=w / w.sum())

    def each_class(pos: np.ndarray) -> np.ndarray:
        if groups is None:
            return rng.permutation(pos)
        drawn = [draw(pos[labels[pos] == c], int((labels[pos] == c).sum())) for c in np.unique(labels[pos])]
        return rng.permutation(np.concatenate(drawn))

    if not covid_percent or covid_class is None:
        return np.array_split(each_class(np.arange(n)), max(1, n // batch_size))
    covid = np.flatnonzero(labels == covid_class)
    other = np.flatnonzero(labels != covid_class)
    k = max(1, round(covid_percent * batch_size))
    if len(covid) == 0 or len(other) == 0:
        raise ConfigError(
            "--covid-percent needs COVID-19 and other images in the training split; pass --covid-percent 0"
        )
    other = each_class(other)
    chunks = np.array_split(other, max(1, len(other) // (batch_size - k)))
    cycle = draw(covid, k * len(chunks))
    return [np.concatenate([c, cycle[i * k : (i + 1) * k]]) for i, c in enumerate(chunks)]


def shard(batch: np.ndarray, dist: Dist) -> np.ndarray:
    return np.array_split(batch, dist.world)[dist.rank]


# --- the run -----------------------------------------------------------------------------------------


def _class_weights(spec: str, labels: np.ndarray, classes: tuple[str, ...]) -> torch.Tensor | None:
    k = len(classes)
    if spec == "none":
        return None
    if spec == "reference":  # the reference's covid_weight=4
        return torch.tensor([4.0 if c == positive_class(classes) else 1.0 for c in classes])
    if spec == "balanced":
        counts = np.bincount(labels, minlength=k).astype(float)
        return torch.tensor(counts.sum() / (k * np.maximum(counts, 1)), dtype=torch.float32)
    try:
        w = [float(v) for v in spec.split(",")]
    except ValueError:
        w = []
    if len(w) != k or min(w, default=0) <= 0:
        raise ConfigError(
            f"--class-weights {spec!r}: give reference, none, balanced, or {k} positive numbers ({', '.join(classes)})"
        )
    return torch.tensor(w, dtype=torch.float32)


def _check(cfg: TrainConfig) -> None:
    if not 0 <= cfg.covid_percent < 1:
        raise ConfigError(f"--covid-percent must be in [0, 1), not {cfg.covid_percent}")
    if cfg.epochs < 1 or cfg.batch_size < 1 or cfg.lr <= 0:
        raise ConfigError("--epochs, --batch-size and --lr must be positive")
    if cfg.in_channels not in (1, 3):
        raise ConfigError(f"--in-channels must be 1 or 3, not {cfg.in_channels}")
    if cfg.compile not in ("auto", "on", "off"):
        raise ConfigError(f"--compile must be auto, on or off, not {cfg.compile!r}")
    if cfg.debias != "none" and (cfg.task != "classification" or cfg.debias_weight <= 0):
        raise ConfigError("--debias source is for --task classification, with a --debias-weight above 0")
    if min(cfg.aug_gamma, cfg.aug_blur, cfg.aug_noise) < 0:
        raise ConfigError("--aug-gamma, --aug-blur and --aug-noise must be >= 0 (0: off)")
    if not cfg.zoom_min <= cfg.zoom_max or cfg.zoom_min <= 0:
        raise ConfigError("--zoom-min must be positive and at most --zoom-max")
    if cfg.task not in TASKS:
        raise ConfigError(f"--task must be one of {', '.join(TASKS)}, not {cfg.task!r}")
    if cfg.task != "classification" and cfg.binary:
        raise ConfigError(f"--binary is for classification, not --task {cfg.task}")
    if cfg.freeze_backbone and cfg.init == "random":
        raise ConfigError(
            "--freeze-backbone needs trained features: give --init CHECKPOINT (or imagenet for the "
            "torchvision baselines)"
        )
    cfg.make_task()  # a malformed --risk-bins fails here, before anything is read
    get_spec(cfg.arch)


def train_device(name: str, dist: Dist) -> torch.device:
    """evaluate's device resolution, with "auto" and "cuda" meaning this process's own GPU."""
    if name == "auto" and not torch.cuda.is_available():
        return torch.device("cpu")
    if name in ("auto", "cuda"):
        return resolve_device(f"cuda:{dist.local_rank}")
    return resolve_device(name)


def _init_weights(model: torch.nn.Module, cfg: TrainConfig) -> None:
    if cfg.init in ("random", "imagenet"):  # imagenet: loaded by _create
        return
    ckpt = read_checkpoint(cfg.init)
    if ckpt["arch"] != cfg.arch:
        raise ConfigError(f"{cfg.init}: a checkpoint of {ckpt['arch']}, not of --arch {cfg.arch}")
    if ckpt["arch_args"].get("in_channels") != cfg.in_channels:
        raise ConfigError(
            f"{cfg.init}: made for {ckpt['arch_args'].get('in_channels')}-channel input, "
            f"not --in-channels {cfg.in_channels}"
        )
    head = {f"classifier.{k}" for k in model.get_classifier().state_dict()}
    weights = ckpt["model"]
    if ckpt.get("lung_model"):  # a lung-field model's classifier (its segmenter is --lung-model's business)
        weights = {k.removeprefix("net."): v for k, v in weights.items() if k.startswith("net.")}
    state = {k: v for k, v in weights.items() if k not in head}  # the classifier starts afresh
    missing, unexpected = model.load_state_dict(state, strict=False)
    if set(missing) - head or unexpected:
        raise ConfigError(
            f"{cfg.init}: weights do not fit {cfg.arch} (missing {sorted(set(missing) - head)[:3]}, "
            f"unexpected {unexpected[:3]})"
        )


def lung_model_meta(ckpt: dict, source: str) -> dict:
    """What a classifier's checkpoint records of its segmenter (``lung_model``): arch, arch_args, contract,
    where it came from; its weights travel in the classifier's state dict."""
    if ckpt.get("task") != LUNGS_TASK:
        raise ConfigError(
            f"{source}: a {ckpt.get('task', 'classification')} checkpoint, not a lung segmenter; "
            "--lung-model takes a `covidnet lungs train` best.pt"
        )
    return {"arch": ckpt["arch"], "arch_args": ckpt["arch_args"], "preprocess": ckpt["preprocess"], "source": source}


def _lung_model(cfg: TrainConfig, store) -> dict:
    """``--lungs crop|mask``: the lung segmenter's checkpoint, from ``--lung-model`` or else the one the
    dataset was built with; one line and no training when there is none."""
    path = cfg.lung_model
    if not path:
        built = store.build_config().get("lungs") or ""
        if not built:
            raise ConfigError(
                f"--lungs {cfg.lungs} needs a lung segmenter and {cfg.data} was built without one: give --lung-model "
                "(a `covidnet lungs train` best.pt), or build the dataset with data build --lungs CKPT"
            )
        if not built.endswith(".pt") or not Path(built).is_file():
            raise ConfigError(
                f"--lungs {cfg.lungs}: {cfg.data} was built with --lungs {built}, which is not a readable "
                "`covidnet lungs train` .pt here; give --lung-model"
            )
        path = built
    if not Path(path).is_file():
        raise ConfigError(f"--lung-model {path}: not found")
    ckpt = read_checkpoint(path)
    lung_model_meta(ckpt, str(path))  # a classifier or a severity model fails here, before any training
    return ckpt


def _create(cfg: TrainConfig) -> torch.nn.Module:
    num_classes = len(cfg.make_task().outputs)
    if cfg.init != "imagenet":
        return create_model(cfg.arch, num_classes=num_classes, in_channels=cfg.in_channels)
    if get_spec(cfg.arch).family != "torchvision":
        raise ConfigError(
            f"--init imagenet is for the torchvision baselines, not {cfg.arch}; use --init random or a checkpoint"
        )
    import socket

    import torchvision

    weights = torchvision.models.get_model_weights(cfg.arch).DEFAULT
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(15)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):  # torch.hub chatter
            return create_model(cfg.arch, num_classes=num_classes, in_channels=cfg.in_channels, weights="imagenet")
    except Exception as e:
        raise CovidnetError(
            f"ImageNet weights for {cfg.arch} are not cached and could not be downloaded "
            f"({type(e).__name__}); download {weights.url} and place it at {cached}"
        ) from None
    finally:
        socket.setdefaulttimeout(old)


class RunLog:
    """The run's per-epoch log: CSV always, TensorBoard when the package is installed."""

    def __init__(self, run: Path, enabled: bool):
        self.path = run / "log.csv"
        self.enabled = enabled
        self.tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run / "tensorboard"))
            except Exception:  # tensorboard is an optional extra
                self.tb = None

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        new = not self.path.exists()
        with open(self.path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(row))
            if new:
                w.writeheader()
            w.writerow(row)
        if self.tb:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k != "epoch":
                    self.tb.add_scalar(k, v, row["epoch"])
            self.tb.flush()


def write_status(run: Path, dist: Dist, state: str, **info) -> None:
    if dist.main:
        write_json(run / "run.json", {"state": state, "version": __version__, **info})


def train(cfg: TrainConfig) -> dict:
    """Train as ``cfg`` says; returns a summary (also in RUN_DIR/run.json)."""
    _check(cfg)
    return distributed(_train, cfg, cfg.device)


def distributed(body, cfg, device_name: str):
    """``body(cfg, dist, device)`` in this process's place of a ``torchrun`` group (or alone): the process
    group set up before and torn down after; what every training command runs in."""
    dist = Dist.from_env()
    device = train_device(device_name, dist)
    if dist.world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        torch.distributed.init_process_group(backend)
    try:
        return body(cfg, dist, device)
    finally:
        if dist.world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


RESUME_MAY_CHANGE = ("resume", "progress", "epochs", "out", "host_memory_gb", "max_steps")


def check_run(cfg) -> Path:
    """The run folder ``cfg.out`` can be started (or resumed, ``cfg.resume``) as asked; a resumed run's
    settings must be those in its config.json but for ``RESUME_MAY_CHANGE``. A folder holding no
    checkpoint (a start that failed before its first epoch) may be started again. ``cfg``: any training
    command's config dataclass."""
    run = Path(cfg.out)
    if cfg.resume:
        if not (run / "last.pt").is_file():
            raise ConfigError(f"{run}: nothing to resume (no last.pt); start it without --resume")
        saved = json.loads((run / "config.json").read_text())
        for f in fields(type(cfg)):
            was = saved.get(f.name, f.default)  # a field newer than the run had its default then
            if f.name not in RESUME_MAY_CHANGE and was != getattr(cfg, f.name):
                raise ConfigError(
                    f"{run}: --{f.name.replace('_', '-')} was {was!r} in this run, "
                    f"not {getattr(cfg, f.name)!r}; resume with the run's own settings"
                )
    elif (run / "last.pt").exists() or (run / "best.pt").exists():
        raise ConfigError(f"{run}: holds a run already; pass --resume to continue it or choose another --out")
    elif run.exists() and not run.is_dir():
        raise ConfigError(f"{run}: exists and is not a folder")
    return run


def start_run(run: Path, cfg, dist: Dist, command: str = "train") -> None:
    """Make the run folder and write ``cfg`` (of ``command``) into its config.json, on rank 0."""
    if dist.world > 1:
        torch.distributed.barrier()  # every rank has checked the folder before rank 0 writes into it
    if dist.main:
        run.mkdir(parents=True, exist_ok=True)
        for stale in ("log.csv",) if not cfg.resume else ():
            (run / stale).unlink(missing_ok=True)
        write_json(run / "config.json", {"command": command, "version": __version__, **cfg.to_dict()})
    if dist.world > 1:
        torch.distributed.barrier()


@dataclass
class _Run:
    """One training run's state, shared by its stages."""

    cfg: TrainConfig
    dist: Dist
    device: torch.device
    path: Path = None
    task: Task = None
    contract: Contract = None
    y_train: np.ndarray = None
    pixels: InMemory | Streamed = None  # the training and validation rows' stored pixels (``covidnet.feed``)
    labels: torch.Tensor = None
    train_pos: np.ndarray = None
    val_pos: np.ndarray = None
    covid_class: int | None = None
    covid_percent: float = 0.0
    model: torch.nn.Module = None
    net: torch.nn.Module = None  # the model as stepped: DDP- and compile-wrapped
    opt: torch.optim.Optimizer = None
    sched: object = None
    start_epoch: int = 0
    start_step: int = 0
    best: float = math.inf
    accumulators: dict | None = None
    history: list = field(default_factory=list)
    steps_done: int = 0  # optimisation steps taken by this process (for --max-steps)
    sources: torch.Tensor = None  # --debias source: each training image's source index ...
    adv_weight: torch.Tensor = None  # ... and its weight in the adversary's loss (0: its class has one source)
    adv_per_image: float = 0.0  # the mean weight of the images this epoch draws: the adversary loss's scale
    adversary: torch.nn.Module = None
    adv_shape: tuple = ()  # (classes, sources) of the adversary to make
    source_groups: np.ndarray = None  # --balance-sources: each training image's source
    adv: dict = field(default_factory=dict)  # the adversary's correct and counted images this epoch
    lung_ckpt: dict | None = None  # --lungs crop|mask: the segmenter's checkpoint, read once
    lung_meta: dict | None = None  # ... and what the classifier's checkpoint records of it

    @property
    def mem_format(self):
        return torch.channels_last if self.cfg.channels_last else torch.contiguous_format

    @property
    def amp(self):
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.cfg.amp and self.device.type == "cuda")

    def batch_input(
        self, pos: np.ndarray, params: torch.Tensor | None, host: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The network's input for positions ``pos``; ``host``: their pixels, when already read ahead."""
        x = uint8_to_unit((self.pixels[pos] if host is None else host).to(self.device, non_blocking=True))
        if params is not None:
            x = augment(x, params)
        return self.contract.model_input(x, self.mem_format)

    def payload(self, epoch: int, step: int, accumulators=None) -> dict:
        cfg = self.cfg
        return {
            "arch": cfg.arch,
            "arch_args": self.model.arch_args,
            **self.task.meta(),
            "preprocess": self.contract.to_dict(),
            **({"lung_model": self.lung_meta} if self.lung_meta else {}),
            "memory_format": "channels_last" if cfg.channels_last else "contiguous",
            "train_config": cfg.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "epoch": epoch,
            "step": step,
            "best_val_loss": self.best,
            "accumulators": accumulators,
            **({"adversary": self.adversary.state_dict()} if self.adversary is not None else {}),
        }


def _data_rows(cfg: TrainConfig, store, task: Task, world: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The train and val rows ``task`` can use; one line when there are none or the batch does not fit."""
    train_rows, val_rows = task.rows(store, "train"), task.rows(store, "val")
    if len(train_rows) == 0 or len(val_rows) == 0:
        raise ConfigError(
            f"{cfg.data}: --task {task.name} needs train and val {task.needs}; "
            f"it has {len(train_rows)} and {len(val_rows)}"
        )
    if cfg.batch_size > len(train_rows):
        raise ConfigError(f"--batch-size {cfg.batch_size} is larger than the training split ({len(train_rows)} images)")
    if cfg.batch_size < world:
        raise ConfigError(f"--batch-size {cfg.batch_size} is smaller than the number of processes ({world})")
    return train_rows, val_rows


def check_training(cfg: TrainConfig, store=None) -> None:
    """Everything ``train(cfg)`` refuses before it reads a pixel, without reading one: the settings, the
    dataset's splits, the lung segmenter of ``--lungs``, the sources of ``--debias source`` and
    ``--balance-sources``. What runs many
    trainings (``covidnet study``) checks them all with this before the first starts."""
    _check(cfg)
    store = store if store is not None else open_store(cfg.data)
    task = cfg.make_task()
    train_rows, _ = _data_rows(cfg, store, task)
    if cfg.lungs != "none":
        _lung_model(cfg, store)
    if cfg.debias == "source":
        source_targets(store.sources(train_rows), task.targets(store, train_rows))
    if cfg.balance_sources:
        source_index(store.sources(train_rows), task.targets(store, train_rows), "--balance-sources")


def _stage_data(r: _Run) -> None:
    """The rows the task can use, their targets, and their stored pixels once on the device (or pinned host
    memory when they do not fit); the preprocessing contract from the store, with the model's half."""
    cfg = r.cfg
    store = open_store(cfg.data)
    r.task = task = cfg.make_task()
    train_rows, val_rows = _data_rows(cfg, store, task, r.dist.world)
    r.path = check_run(cfg)
    r.y_train, y_val = task.targets(store, train_rows), task.targets(store, val_rows)
    r.covid_class, r.covid_percent = task.rebalance(cfg.covid_percent)  # COVID-19 rebalancing: classification
    if r.covid_class is not None:
        task.weights = _class_weights(cfg.class_weights, r.y_train, cfg.classes)
    rows = np.concatenate([train_rows, val_rows])
    mean, std = get_spec(cfg.arch).normalisation(cfg.in_channels)
    r.contract = store.contract.for_model(
        cfg.size or store.size, cfg.in_channels, mean, std, cfg.intensity, cfg.lungs, cfg.lung_margin
    )
    r.lung_ckpt = _lung_model(cfg, store) if cfg.lungs != "none" else None
    if cfg.debias == "source":
        index, weight, names = source_targets(store.sources(train_rows), r.y_train)
        r.sources, r.adv_weight = torch.from_numpy(index).to(r.device), torch.from_numpy(weight).to(r.device)
        r.adv_shape = (len(task.outputs), len(names))  # the adversary is made with the model, in _build
    if cfg.balance_sources:
        r.source_groups = source_index(store.sources(train_rows), r.y_train, "--balance-sources")[0]
    r.pixels = stage(store, rows, r.device, memory_budget(cfg.host_memory_gb), r.contract.standardise)
    if r.pixels.streamed and r.dist.main and cfg.progress:
        print(
            f"covidnet train: {len(rows)} images do not fit the host-memory budget; streaming them from {store.root}",
            file=sys.stderr,
        )
    r.labels = torch.from_numpy(np.concatenate([r.y_train, y_val])).to(r.device)
    r.train_pos, r.val_pos = np.arange(len(train_rows)), np.arange(len(train_rows), len(rows))


def _build(r: _Run) -> None:
    """Model (initialised, frozen where asked), optimiser, scheduler; the saved state when resuming."""
    cfg = r.cfg
    torch.manual_seed(cfg.seed)
    model = _create(cfg)
    _init_weights(model, cfg)
    if cfg.freeze_backbone:  # COVIDNet-S: a frozen network's features, a small head trained on them
        for name, child in model.named_children():
            child.requires_grad_(name in HEAD_MODULES)
    if r.lung_ckpt is not None:  # the frozen segmenter goes in front, its weights part of the model's
        from .lungs.field import wrap

        r.lung_meta = lung_model_meta(r.lung_ckpt, str(cfg.lung_model or "the dataset's --lungs model"))
        model = wrap(model, r.lung_meta, r.contract, r.lung_ckpt["model"])
        r.lung_ckpt = None
    r.model = model = model.to(r.device, memory_format=r.mem_format)
    params = [p for p in model.parameters() if p.requires_grad]
    if r.adv_shape:
        r.adversary = SourceAdversary(model.num_features, *r.adv_shape).to(r.device)
        params += list(r.adversary.parameters())
    r.opt = torch.optim.Adam(params, lr=cfg.effective_lr(), weight_decay=cfg.weight_decay)
    r.sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
        r.opt, mode="min", factor=cfg.plateau_factor, patience=cfg.plateau_patience
    )
    if cfg.resume:
        ckpt = read_checkpoint(r.path / "last.pt")
        if ckpt["arch"] != cfg.arch:
            raise ConfigError(f"{r.path / 'last.pt'}: a checkpoint of {ckpt['arch']}, not of --arch {cfg.arch}")
        model.load_state_dict(ckpt["model"])
        if r.adversary is not None:
            r.adversary.load_state_dict(ckpt["adversary"])
        r.opt.load_state_dict(ckpt["optimizer"])
        r.sched.load_state_dict(ckpt["scheduler"])
        r.start_epoch, r.start_step, r.best = ckpt["epoch"], ckpt["step"], ckpt["best_val_loss"]
        r.accumulators = ckpt.get("accumulators")
    start_run(r.path, cfg, r.dist)  # only now, with the model built and its weights loaded, is anything written
    net = model if r.adversary is None else Debiased(model, r.adversary, cfg.debias_weight)
    r.net = wrap_for_training(net, r.dist, r.device, cfg.compile)


def wrap_for_training(model: torch.nn.Module, dist: Dist, device: torch.device, compile: str) -> torch.nn.Module:
    """The model as a training step calls it: DistributedDataParallel under torchrun, ``torch.compile``d
    when ``compile`` is on (or auto, on a GPU)."""
    net = model
    if dist.world > 1:
        on_gpu = device.type == "cuda"
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if on_gpu else None)
    if compile == "on" or (compile == "auto" and device.type == "cuda"):
        net = torch.compile(net, dynamic=False)  # a few static shapes (batch sizes differ by one) beat dynamic kernels
    return net


def _train(cfg: TrainConfig, dist: Dist, device: torch.device) -> dict:
    r = _Run(cfg, dist, device)
    _stage_data(r)
    _build(r)
    log = RunLog(r.path, dist.main)
    write_status(r.path, dist, "running", epoch=r.start_epoch, step=r.start_step)
    with stop_on_signals() as stop, status_on_failure(r.path, dist):
        for epoch in range(r.start_epoch, cfg.epochs):
            a, seen = _train_epoch(r, epoch, stop)
            _end_epoch(r, epoch, a, seen, log)
            r.start_step = 0
            if cfg.max_steps and r.steps_done >= cfg.max_steps:
                break
    return finish_run(r.path, dist, device, cfg.epochs, r.history, {"best_val_loss": r.best})


def finish_run(path: Path, dist: Dist, device, epochs: int, history: list[dict], best: dict) -> dict:
    """A run's summary (``best``: its best validation figure by name), written to run.json as complete:
    the same for every trainer (``covidnet train``, ``covidnet lungs train``)."""
    rates = [h["images_per_s"] for h in history[1:]] or [h["images_per_s"] for h in history]
    summary = {
        "epochs": epochs,
        **best,
        "final": history[-1] if history else None,
        "images_per_s": float(np.median(rates)) if rates else None,
        "world_size": dist.world,
        "device": str(device),
        "best": str(path / "best.pt"),
        "last": str(path / "last.pt"),
    }
    write_status(path, dist, "complete", **summary)
    return summary


def _train_epoch(r: _Run, epoch: int, stop: dict) -> tuple[dict, np.ndarray]:
    """One epoch's steps (from the saved step when resuming); a stop request writes a resumable
    checkpoint and raises ``TrainingInterrupted``. Returns the epoch's accumulators and the images seen."""
    cfg, dist, device = r.cfg, r.dist, r.device
    batches = epoch_batches(r.y_train, epoch, cfg.seed, cfg.batch_size, r.covid_class, r.covid_percent, r.source_groups)
    if r.adv_weight is not None:
        drawn = torch.from_numpy(r.train_pos[np.concatenate(batches)]).to(device)
        r.adv_per_image = float(r.adv_weight[drawn].mean())
    first = r.start_step if epoch == r.start_epoch else 0
    a = (
        r.accumulators
        if (r.accumulators and epoch == r.start_epoch)
        else {"loss": 0.0, "correct": 0.0, "n": 0.0, "seconds": 0.0}
    )
    loss_acc = torch.zeros((), device=device, dtype=torch.float64)  # summed on the device: no sync per step
    correct_acc = torch.zeros((), device=device, dtype=torch.float64)  # correct images, or summed errors
    t_epoch = time.perf_counter()
    bar = progress_bar(cfg.progress and dist.main, len(batches), first, epoch, cfg.epochs)
    r.net.train()
    if cfg.freeze_backbone:  # frozen means its BatchNorm statistics too
        for name, child in classifier_of(r.model).named_children():
            child.train(name in HEAD_MODULES)
    last = len(batches) if not cfg.max_steps else min(len(batches), first + cfg.max_steps - r.steps_done)
    steps = [r.train_pos[shard(b, dist)] for b in batches[first:last]]
    for step, pos, host in zip(range(first, last), steps, prefetch(r.pixels, steps)):
        seed = step_seed(cfg.seed, epoch, step)
        torch.manual_seed(seed)  # dropout and anything else drawing from the global generator
        params = (
            None if cfg.augment.identity else sample_params(len(pos), cfg.augment, torch.Generator().manual_seed(seed))
        )
        x, y = r.batch_input(pos, params, host), r.labels[torch.from_numpy(pos).to(device)]
        try:
            loss, logits = _step(r, x, y, torch.from_numpy(pos).to(device))
        except torch.OutOfMemoryError:
            raise CovidnetError(
                f"out of GPU memory training {cfg.arch} at {r.contract.input_size} px with "
                f"--batch-size {cfg.batch_size}; lower --batch-size or --size"
            ) from None
        r.steps_done += 1
        loss_acc += loss.detach() * len(pos)
        correct_acc += r.task.agreement(logits.detach(), y)
        a["n"] += len(pos)
        if bar is not None:
            bar.update(1)
            if step % 20 == 0:
                elapsed = a["seconds"] + time.perf_counter() - t_epoch
                bar.set_postfix(loss=f"{loss.item():.3f}", img_s=f"{a['n'] * dist.world / max(elapsed, 1e-9):.0f}")
        if stop_requested(stop, dist, device):
            if dist.main:
                save_checkpoint(
                    r.path / "last.pt", r.payload(epoch, step + 1, _fold(a, loss_acc, correct_acc, t_epoch))
                )
            write_status(r.path, dist, "interrupted", epoch=epoch, step=step + 1)
            raise TrainingInterrupted(
                f"interrupted at epoch {epoch + 1} step {step + 1}; resumable checkpoint "
                f"in {r.path / 'last.pt'}: run the same command with --resume"
            )
    if bar is not None:
        bar.close()
    return _fold(a, loss_acc, correct_acc, t_epoch), np.concatenate(batches[:last])  # one device sync per epoch


def _step(r: _Run, x: torch.Tensor, y: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimisation step: the task's loss (plus the source adversary's with --debias source)."""
    with r.amp:
        out = r.net(x, y) if r.adversary is not None else r.net(x)
    logits = out[0] if r.adversary is not None else out
    loss = r.task.loss(logits.float(), y)
    total = loss
    if r.adversary is not None:  # the reversal inside Debiased turns this into the backbone's penalty
        adv_loss, adv_correct, adv_n = adversary_loss(out[1], r.sources[pos], r.adv_weight[pos], r.adv_per_image)
        total = loss + adv_loss
        r.adv["correct"] = r.adv.get("correct", 0) + adv_correct
        r.adv["n"] = r.adv.get("n", 0) + adv_n
    r.opt.zero_grad(set_to_none=True)
    total.backward()
    r.opt.step()
    return loss, logits


def _end_epoch(r: _Run, epoch: int, a: dict, seen: np.ndarray, log: RunLog) -> None:
    """Precise BN, validation, the scheduler's step, the log row and line, and the checkpoints."""
    cfg, dist, task = r.cfg, r.dist, r.task
    loss_sum, correct, n, seconds = dist.all_sum([a["loss"], a["correct"], a["n"], a["seconds"]], r.device)
    if cfg.precise_bn and not cfg.freeze_backbone:
        recalibrate_bn(r.model, r.batch_input, r.train_pos, cfg, epoch, r.amp)
    val = evaluate_split(
        r.model, r.pixels, r.val_pos, r.labels, cfg.eval_batch_size, dist, r.device, r.contract, r.mem_format, task
    )
    r.sched.step(val["loss"])
    fields_, shown = task.log(val)
    row = {
        "epoch": epoch + 1,
        "lr": r.opt.param_groups[0]["lr"],
        "train_loss": loss_sum / n,
        f"train_{task.agreement_name}": correct / n,
        "val_loss": val["loss"],
        **fields_,
    }
    if r.adversary is not None:  # how well the adversary still tells the sources apart within a class
        adv_correct, adv_n = dist.all_sum([float(r.adv.get("correct", 0)), float(r.adv.get("n", 0))], r.device)
        row["train_adversary_acc"] = adv_correct / adv_n if adv_n > 0 else float("nan")
        shown += f" | adversary acc {row['train_adversary_acc']:.3f}"
        r.adv = {}
    mix, mix_text = task.batch_mix(r.y_train[seen])
    row.update(mix)
    shown += mix_text
    row.update(
        {
            "images_seen": int(len(seen)),
            "unique_images": int(len(np.unique(seen))),
            "images_per_s": n / max(seconds / dist.world, 1e-9),
        }
    )
    r.history.append(row)
    log.write(row)
    if dist.main and cfg.progress:
        print(
            f"epoch {epoch + 1}/{cfg.epochs}: train loss {row['train_loss']:.4f} {task.agreement_name} "
            f"{correct / n:.3f} | val loss {val['loss']:.4f} {shown} | {row['images_per_s']:.0f} img/s",
            file=sys.stderr,
        )
    improved = val["loss"] < r.best
    r.best = min(r.best, val["loss"])
    if dist.main:
        p = r.payload(epoch + 1, 0)
        save_checkpoint(r.path / "last.pt", p)
        if improved:
            save_checkpoint(
                r.path / "best.pt",
                {
                    **p,
                    "optimizer": None,
                    "scheduler": None,
                    "val_metrics": {k: v for k, v in val.items() if k != "confusion"},
                },
            )


def _fold(a: dict, loss_acc: torch.Tensor, correct_acc: torch.Tensor, t_epoch: float) -> dict:
    """The epoch's accumulators as plain numbers (a resumed epoch starts from those saved)."""
    return {
        "loss": a["loss"] + float(loss_acc),
        "correct": a["correct"] + float(correct_acc),
        "n": a["n"],
        "seconds": a["seconds"] + time.perf_counter() - t_epoch,
    }


@contextlib.contextmanager
def stop_on_signals():
    """A ``{"signal": None}`` that SIGTERM or SIGINT fill in while the block runs (the loop checks it after
    each step, ``stop_requested``, and writes a resumable checkpoint); the old handlers back afterwards."""
    stop = {"signal": None}

    def on_signal(signum, frame):
        stop["signal"] = signum

    handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)} if main_thread() else {}
    try:
        yield stop
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)


@contextlib.contextmanager
def status_on_failure(run: Path, dist: Dist):
    """run.json says "failed", with the error, when the block raises anything but ``TrainingInterrupted``."""
    try:
        yield
    except BaseException as e:
        if not isinstance(e, TrainingInterrupted):
            write_status(run, dist, "failed", error=f"{type(e).__name__}: {e}")
        raise


def main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def stop_requested(stop: dict, dist: Dist, device) -> bool:
    flag = stop["signal"] is not None
    if dist.world > 1:  # every rank stops at the same step
        flag = dist.all_sum([float(flag)], device)[0] > 0
    return flag


def progress_bar(enabled: bool, total: int, initial: int, epoch: int, epochs: int):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(
        total=total, initial=initial, desc=f"epoch {epoch + 1}/{epochs}", unit="step", file=sys.stderr, leave=False
    )


def recalibrate_bn(model, batch_input, train_pos: np.ndarray, cfg: TrainConfig, epoch: int, amp) -> None:
    """Recompute BatchNorm running statistics from unaugmented training images with the current weights
    ("precise BN", Wu & Johnson 2021), using torch's own ``swa_utils.update_bn``. The running averages
    that training keeps lag behind weights that are still moving: on phantom data they cost up to half
    the validation accuracy of the very same weights. Every process uses the same images, so the
    statistics are identical on every rank."""
    from torch.optim.swa_utils import update_bn

    rng = np.random.default_rng([cfg.seed, epoch, 0xB4])
    pos = train_pos[rng.permutation(len(train_pos))[: cfg.precise_bn]]
    batches = (batch_input(pos[k : k + cfg.eval_batch_size], None) for k in range(0, len(pos), cfg.eval_batch_size))
    net = classifier_of(model)
    if net is not model:  # a lung-field model: the frozen segmenter keeps its statistics, the classifier's are redone
        batches = (model.field(x) for x in batches)
    with amp:
        update_bn(batches, net)


def evaluate_split(
    model,
    pixels,
    positions: np.ndarray,
    labels: torch.Tensor,
    batch_size: int,
    dist: Dist,
    device,
    contract: Contract,
    memory_format,
    task: Task,
) -> dict:
    """The task's validation figures over ``positions``, each image counted exactly once however many
    processes share the work (no padding duplicates), through the same ``predict_logits`` and metrics
    as ``covidnet eval``. ``model`` is the plain module, not the DDP wrapper: shards differ in length,
    and DDP's per-forward collectives would wait for each other."""
    mine = positions[dist.rank :: dist.world]
    logits = predict_logits(
        model,
        lambda pos: pixels[pos],
        mine,
        batch_size,
        contract,
        device,
        memory_format,
    )
    parts = dist.gather((mine, logits if len(mine) else torch.zeros(0, len(task.outputs))))
    pos = np.concatenate([p for p, _ in parts])
    logits = torch.cat([lg for _, lg in parts])
    y = labels[torch.from_numpy(pos).to(labels.device)].cpu().numpy()
    return task.validation(y, logits)
