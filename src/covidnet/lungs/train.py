"""``covidnet lungs train``: a lung-field segmenter from the registry (``models/segment.py``), trained from
random initialisation on a built dataset's annotated lung masks (``data build --lung-masks``).

It is ``covidnet train`` with another target, and takes its pieces rather than copying them: the run
folder and its checks (``check_run``, ``start_run``, ``run.json``), ``torchrun`` (``distributed``,
``Dist``, ``shard``), the sampler (``epoch_batches``: a permutation of the training images per epoch),
the per-step seeds, the in-memory or streamed input path (``covidnet.feed``), SIGTERM and SIGINT
(``stop_on_signals``: a resumable checkpoint, then exit 143), progress bars and the log. Every random
choice is derived from (seed, epoch, step), so a run killed at any step and resumed with ``--resume``
takes the steps an uninterrupted run would have taken.

* **Data**: the train split's rows with an annotated mask (never a ``predicted`` one) for training, the
  val split's for model selection; the splits are the build's, by patient. The test split is never read.
* **Augmentation**, on the device, per image: ``covidnet.augment``'s sampled flip, rotation, zoom and
  translation warp image and mask alike (bilinear for the image, nearest for the mask), brightness the
  image alone.
* **Loss**: binary cross-entropy plus ``--dice-weight`` x soft Dice (1 - 2|P∩T| / (|P| + |T|) over the
  batch), both over the pixels that are not ``ignore`` (127) in the annotation, computed at the stored
  side (the network's logits are resized to it when ``--size`` differs).
* **Selection**: Adam; after each epoch the validation images are segmented through ``lungs.infer.segment_logits``
  (what eval and predict use) and scored by their mean Dice; ReduceLROnPlateau follows it, and
  ``best.pt`` is the epoch with the highest.

Checkpoints describe themselves: ``task`` "lungs", the architecture and its arguments, the store's
preprocessing contract with the model's input half, the training config.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..augment import AugmentConfig, augment, augment_labels, sample_params
from ..checkpoint import read_checkpoint, save_checkpoint
from ..config import option
from ..contract import Contract
from ..data.lungmasks import IGNORE, LUNG
from ..data.store import open_store
from ..errors import ConfigError, CovidnetError
from ..feed import InMemory, Streamed, memory_budget, prefetch, stage
from ..models import create_model, get_spec, list_models
from ..runtime import uint8_to_unit
from ..train import (
    Dist,
    RunLog,
    TrainingInterrupted,
    check_run,
    distributed,
    epoch_batches,
    finish_run,
    progress_bar,
    shard,
    start_run,
    status_on_failure,
    step_seed,
    stop_on_signals,
    stop_requested,
    wrap_for_training,
    write_status,
)
from .infer import TASK, segment_logits
from .segmenter import THRESHOLD, is_lung


@dataclass
class LungsConfig:
    data: str = option(help="a dataset folder written by `covidnet data build --lung-masks NAME=DIR`")
    out: str = option(help="run folder: config.json, log.csv, last.pt, best.pt, run.json")
    arch: str = option("lung-unet", "segmentation architecture (`covidnet models`: the segmenters)")
    epochs: int = option(40, "epochs")
    batch_size: int = option(8, "images per step, over all processes together")
    lr: float = option(1e-3, "Adam learning rate")
    weight_decay: float = option(0.0, "Adam weight decay")
    plateau_factor: float = option(0.5, "ReduceLROnPlateau factor on the validation Dice")
    plateau_patience: int = option(5, "ReduceLROnPlateau patience (epochs)")
    size: int = option(0, "input side in px; 0: the dataset's stored size")
    dice_weight: float = option(1.0, "weight of the soft Dice term beside the binary cross-entropy")
    translate: float = option(0.05, "augmentation: max shift, fraction of the side")
    rotate: float = option(10.0, "augmentation: max rotation, degrees")
    hflip: float = option(0.5, "augmentation: horizontal flip probability")
    brightness: float = option(0.10, "augmentation: max brightness change, fraction (the image only)")
    zoom_min: float = option(0.9, "augmentation: smallest zoom")
    zoom_max: float = option(1.1, "augmentation: largest zoom")
    seed: int = option(0, "seed of every random choice")
    device: str = option("auto", "auto, cpu, cuda or cuda:N")
    amp: bool = option(True, "bf16 autocast on GPU")  # never on CPU
    channels_last: bool = option(True, "channels-last memory format")
    compile: str = option("auto", "torch.compile: auto (GPU only), on, off")
    eval_batch_size: int = option(32, "batch size for validation")
    host_memory_gb: float = option(
        0.0,
        "host memory the training and validation images and masks may take; above it they are streamed from "
        "the store (0: half of the memory available at the start)",
    )
    max_steps: int = option(0, "end the run after this many optimisation steps, mid-epoch if need be (0: no limit)")
    resume: bool = option(False, "continue the run in --out from its last.pt")
    progress: bool = option(True, "progress bars and per-epoch lines")

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def augment(self) -> AugmentConfig:
        return AugmentConfig(self.translate, self.rotate, self.hflip, self.brightness, (self.zoom_min, self.zoom_max))


def lung_loss(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, dice_weight: float) -> torch.Tensor:
    """BCE over the valid pixels plus ``dice_weight`` x the batch's soft Dice loss over them; all (B, 1, H, W)."""
    n = valid.sum().clamp_min(1.0)
    bce = F.binary_cross_entropy_with_logits(logits, target, weight=valid, reduction="sum") / n
    p, t = torch.sigmoid(logits) * valid, target * valid
    soft_dice = 1 - (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1)
    return bce + dice_weight * soft_dice


def _check(cfg: LungsConfig) -> None:
    if get_spec(cfg.arch).kind != "segmenter":
        raise ConfigError(
            f"--arch {cfg.arch} is a classifier; lungs train takes a segmenter: {', '.join(list_models('segmenter'))}"
        )
    if cfg.epochs < 1 or cfg.batch_size < 1 or cfg.lr <= 0 or cfg.eval_batch_size < 1:
        raise ConfigError("--epochs, --batch-size, --eval-batch-size and --lr must be positive")
    if cfg.dice_weight < 0:
        raise ConfigError(f"--dice-weight must be >= 0, not {cfg.dice_weight}")
    if cfg.compile not in ("auto", "on", "off"):
        raise ConfigError(f"--compile must be auto, on or off, not {cfg.compile!r}")
    if not cfg.zoom_min <= cfg.zoom_max or cfg.zoom_min <= 0:
        raise ConfigError("--zoom-min must be positive and at most --zoom-max")
    if cfg.size and cfg.size < 32:
        raise ConfigError(f"--size must be at least 32 px (or 0: the stored size), not {cfg.size}")


def train_lungs(cfg: LungsConfig) -> dict:
    """Train a lung segmenter as ``cfg`` says; returns a summary (also in RUN_DIR/run.json)."""
    _check(cfg)
    return distributed(_train, cfg, cfg.device)


@dataclass
class _Run:
    """One segmentation run's state, shared by its stages."""

    cfg: LungsConfig
    dist: Dist
    device: torch.device
    path: Path = None
    contract: Contract = None
    pixels: InMemory | Streamed = None  # the training and validation rows' stored pixels
    masks: InMemory | Streamed = None  # ... and their stored masks (0 / 127 / 255)
    train_pos: np.ndarray = None
    val_pos: np.ndarray = None
    model: torch.nn.Module = None
    net: torch.nn.Module = None  # the model as stepped: DDP- and compile-wrapped
    opt: torch.optim.Optimizer = None
    sched: object = None
    start_epoch: int = 0
    start_step: int = 0
    best: float = -math.inf  # the best validation Dice so far
    accumulators: dict | None = None
    history: list = field(default_factory=list)
    steps_done: int = 0

    @property
    def mem_format(self):
        return torch.channels_last if self.cfg.channels_last else torch.contiguous_format

    @property
    def amp(self):
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.cfg.amp and self.device.type == "cuda")

    def batch(self, pos: np.ndarray, params, host_x=None, host_m=None):
        """(network input, target, valid) for positions ``pos``: targets and valid pixels at the stored side."""
        x = uint8_to_unit((self.pixels[pos] if host_x is None else host_x).to(self.device, non_blocking=True))
        m = (self.masks[pos] if host_m is None else host_m).to(self.device, non_blocking=True).unsqueeze(1).float()
        if params is not None:
            x, m = augment(x, params), augment_labels(m, params)
        return self.contract.model_input(x, self.mem_format), (m == LUNG).float(), (m != IGNORE).float()

    def payload(self, epoch: int, step: int, accumulators=None) -> dict:
        return {
            "task": TASK,
            "classes": ["lung"],
            "threshold": THRESHOLD,
            "arch": self.cfg.arch,
            "arch_args": self.model.arch_args,
            "preprocess": self.contract.to_dict(),
            "memory_format": "channels_last" if self.cfg.channels_last else "contiguous",
            "train_config": self.cfg.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "epoch": epoch,
            "step": step,
            "best_val_dice": self.best,
            "accumulators": accumulators,
        }


def _stage_data(r: _Run) -> None:
    """The train and val rows with annotated masks, their pixels and masks on the device (or streamed), and
    the contract from the store with the model's half."""
    cfg = r.cfg
    store = open_store(cfg.data)
    layer = store.mask_layer()  # a store without masks fails here, naming the flag to build with
    train_rows, val_rows = store.mask_rows("train"), store.mask_rows("val")
    if len(train_rows) == 0 or len(val_rows) == 0:
        raise ConfigError(
            f"{cfg.data}: lungs train needs train and val images with annotated lung masks; it has "
            f"{len(train_rows)} and {len(val_rows)}; build with --lung-masks NAME=DIR"
        )
    if cfg.batch_size > len(train_rows):
        raise ConfigError(
            f"--batch-size {cfg.batch_size} is larger than the masked training images ({len(train_rows)})"
        )
    if cfg.batch_size < r.dist.world:
        raise ConfigError(f"--batch-size {cfg.batch_size} is smaller than the number of processes ({r.dist.world})")
    r.path = check_run(cfg)
    rows = np.concatenate([train_rows, val_rows])
    budget = memory_budget(cfg.host_memory_gb) // 2  # half for the images, half for the masks
    r.pixels, r.masks = stage(store, rows, r.device, budget), stage(layer, rows, r.device, budget)
    if r.pixels.streamed and r.dist.main and cfg.progress:
        print(f"covidnet lungs train: streaming {len(rows)} images and masks from {store.root}", file=sys.stderr)
    r.train_pos, r.val_pos = np.arange(len(train_rows)), np.arange(len(train_rows), len(rows))
    mean, std = get_spec(cfg.arch).normalisation(1)
    r.contract = store.contract.for_model(cfg.size or store.size, 1, mean, std)


def _build(r: _Run) -> None:
    """Model (random initialisation), optimiser, scheduler; the saved state when resuming."""
    cfg = r.cfg
    torch.manual_seed(cfg.seed)
    r.model = model = create_model(cfg.arch, num_classes=1, in_channels=1).to(r.device, memory_format=r.mem_format)
    r.opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    r.sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
        r.opt, mode="max", factor=cfg.plateau_factor, patience=cfg.plateau_patience
    )
    if cfg.resume:
        ckpt = read_checkpoint(r.path / "last.pt")
        if ckpt.get("task") != TASK or ckpt["arch"] != cfg.arch:
            raise ConfigError(f"{r.path / 'last.pt'}: not a {cfg.arch} lung segmenter's checkpoint")
        model.load_state_dict(ckpt["model"])
        r.opt.load_state_dict(ckpt["optimizer"])
        r.sched.load_state_dict(ckpt["scheduler"])
        r.start_epoch, r.start_step, r.best = ckpt["epoch"], ckpt["step"], ckpt["best_val_dice"]
        r.accumulators = ckpt.get("accumulators")
    start_run(r.path, cfg, r.dist, command="lungs train")
    r.net = wrap_for_training(model, r.dist, r.device, cfg.compile)


def _train(cfg: LungsConfig, dist: Dist, device: torch.device) -> dict:
    r = _Run(cfg, dist, device)
    _stage_data(r)
    _build(r)
    log = RunLog(r.path, dist.main)
    write_status(r.path, dist, "running", epoch=r.start_epoch, step=r.start_step)
    with stop_on_signals() as stop, status_on_failure(r.path, dist):
        for epoch in range(r.start_epoch, cfg.epochs):
            a = _train_epoch(r, epoch, stop)
            _end_epoch(r, epoch, a, log)
            r.start_step = 0
            if cfg.max_steps and r.steps_done >= cfg.max_steps:
                break
    return finish_run(r.path, dist, device, cfg.epochs, r.history, {"best_val_dice": r.best})


def _step(r: _Run, pos: np.ndarray, params, host_x, host_m) -> torch.Tensor:
    """One optimisation step on the images at ``pos``; returns the loss (on the device)."""
    x, target, valid = r.batch(pos, params, host_x, host_m)
    try:
        with r.amp:
            logits = r.net(x)
        logits = logits.float()
        if logits.shape[-2:] != target.shape[-2:]:
            logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
        loss = lung_loss(logits, target, valid, r.cfg.dice_weight)
        r.opt.zero_grad(set_to_none=True)
        loss.backward()
        r.opt.step()
    except torch.OutOfMemoryError:
        raise CovidnetError(
            f"out of GPU memory training {r.cfg.arch} at {r.contract.input_size} px with "
            f"--batch-size {r.cfg.batch_size}; lower --batch-size or --size"
        ) from None
    return loss.detach()


def _train_epoch(r: _Run, epoch: int, stop: dict) -> dict:
    """One epoch's steps (from the saved step when resuming); a stop request writes a resumable checkpoint
    and raises ``TrainingInterrupted``. Returns the epoch's accumulators."""
    cfg, dist, device = r.cfg, r.dist, r.device
    batches = epoch_batches(np.zeros(len(r.train_pos)), epoch, cfg.seed, cfg.batch_size, None, 0.0)
    first = r.start_step if epoch == r.start_epoch else 0
    a = r.accumulators if (r.accumulators and epoch == r.start_epoch) else {"loss": 0.0, "n": 0.0, "seconds": 0.0}
    loss_acc = torch.zeros((), device=device, dtype=torch.float64)  # summed on the device: no sync per step
    t_epoch = time.perf_counter()
    bar = progress_bar(cfg.progress and dist.main, len(batches), first, epoch, cfg.epochs)
    r.net.train()
    last = len(batches) if not cfg.max_steps else min(len(batches), first + cfg.max_steps - r.steps_done)
    steps = [r.train_pos[shard(b, dist)] for b in batches[first:last]]
    for step, pos, hx, hm in zip(range(first, last), steps, prefetch(r.pixels, steps), prefetch(r.masks, steps)):
        seed = step_seed(cfg.seed, epoch, step)
        torch.manual_seed(seed)
        params = (
            None if cfg.augment.identity else sample_params(len(pos), cfg.augment, torch.Generator().manual_seed(seed))
        )
        loss = _step(r, pos, params, hx, hm)
        r.steps_done += 1
        loss_acc += loss * len(pos)
        a["n"] += len(pos)
        if bar is not None:
            bar.update(1)
            if step % 20 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")
        if stop_requested(stop, dist, device):
            if dist.main:
                save_checkpoint(r.path / "last.pt", r.payload(epoch, step + 1, _fold(a, loss_acc, t_epoch)))
            write_status(r.path, dist, "interrupted", epoch=epoch, step=step + 1)
            raise TrainingInterrupted(
                f"interrupted at epoch {epoch + 1} step {step + 1}; resumable checkpoint "
                f"in {r.path / 'last.pt'}: run the same command with --resume"
            )
    if bar is not None:
        bar.close()
    return _fold(a, loss_acc, t_epoch)


def _fold(a: dict, loss_acc: torch.Tensor, t_epoch: float) -> dict:
    """The epoch's accumulators as plain numbers (a resumed epoch starts from those saved)."""
    return {"loss": a["loss"] + float(loss_acc), "n": a["n"], "seconds": a["seconds"] + time.perf_counter() - t_epoch}


@torch.no_grad()
def validation_dice(r: _Run) -> float:
    """Mean Dice of the validation images (their non-ignore pixels), each segmented as eval segments it;
    every image counted once however many processes share the work."""
    mine = r.val_pos[r.dist.rank :: r.dist.world]
    total = 0.0
    for k in range(0, len(mine), r.cfg.eval_batch_size):
        pos = mine[k : k + r.cfg.eval_batch_size]
        pred = is_lung(segment_logits(r.model, r.pixels[pos].to(r.device), r.contract, r.mem_format))
        m = r.masks[pos].to(r.device)
        valid, truth = m != IGNORE, m == LUNG
        pred, truth = pred & valid, truth & valid
        inter, size = (pred & truth).sum((1, 2)).double(), (pred.sum((1, 2)) + truth.sum((1, 2))).double()
        total += float(torch.where(size > 0, 2 * inter / size.clamp_min(1), torch.ones_like(size)).sum())
    total, n = r.dist.all_sum([total, float(len(mine))], r.device)
    return total / max(n, 1.0)


def _end_epoch(r: _Run, epoch: int, a: dict, log: RunLog) -> None:
    """Validation, the scheduler's step, the log row and line, and the checkpoints."""
    cfg, dist = r.cfg, r.dist
    loss_sum, n, seconds = dist.all_sum([a["loss"], a["n"], a["seconds"]], r.device)
    dice = validation_dice(r)
    r.sched.step(dice)
    row = {
        "epoch": epoch + 1,
        "lr": r.opt.param_groups[0]["lr"],
        "train_loss": loss_sum / max(n, 1.0),
        "val_dice": dice,
        "images_per_s": n / max(seconds / dist.world, 1e-9),
    }
    r.history.append(row)
    log.write(row)
    if dist.main and cfg.progress:
        print(
            f"epoch {epoch + 1}/{cfg.epochs}: train loss {row['train_loss']:.4f} | val Dice {dice:.4f} | "
            f"{row['images_per_s']:.0f} img/s",
            file=sys.stderr,
        )
    improved = dice > r.best
    r.best = max(r.best, dice)
    if dist.main:
        p = r.payload(epoch + 1, 0)
        save_checkpoint(r.path / "last.pt", p)
        if improved:
            save_checkpoint(
                r.path / "best.pt", {**p, "optimizer": None, "scheduler": None, "val_metrics": {"dice": dice}}
            )
