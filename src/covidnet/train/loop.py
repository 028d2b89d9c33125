"""The training loop, written once for every task (``covidnet.tasks``): the task says what differs — its rows
and arrays, how a batch is built and augmented, its loss, its validation and the figure a run is selected
on, what its checkpoint records — and the loop does the rest the same way for all of them:

1. **stage**: the rows the task can use (the build's train and val splits, never test), their targets, and
   their stored arrays once in device memory, or streamed from the store when they do not fit the
   host-memory budget (``train.feed``); the preprocessing contract from the store, with the model's half;
2. **build**: the task's network (seeded), Adam, ReduceLROnPlateau on the monitored figure; the saved state
   when resuming;
3. **steps**: batches drawn by ``train.sampler`` (every random choice from (seed, epoch, step)), augmented
   on the device (``covidnet.augment``), one optimisation step each; a SIGTERM or SIGINT ends the run
   between two steps with a resumable checkpoint (exit 143);
4. **end of an epoch**: precise BatchNorm statistics (where asked), validation through the same forward as
   ``covidnet eval`` (``runtime.device.predict_outputs`` and the task's ``forward``), the scheduler's step,
   the log row, last.pt, and best.pt when the monitored figure improved.

It runs unchanged as one process or under ``torchrun`` (``train.dist``). A run killed at any step and resumed
with ``--resume`` takes exactly the steps an uninterrupted run would have taken.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..augment import augment, sample_params
from ..checkpoint import classifier_arch, read_checkpoint, save_checkpoint
from ..contract import Contract, uint8_to_unit
from ..data.films import image_files, stage_films
from ..data.store import open_store
from ..errors import ConfigError, CovidnetError
from ..runtime.device import predict_outputs
from ..tasks import Task
from .config import TrainConfig
from .dist import Dist, distributed, shard, wrap_for_training
from .feed import memory_budget, prefetch, stage
from .run import (
    RunLog,
    TrainingInterrupted,
    check_run,
    finish_run,
    progress_bar,
    start_run,
    status_on_failure,
    stop_on_signals,
    stop_requested,
    write_status,
)
from .sampler import epoch_batches, step_seed


def train(cfg: TrainConfig) -> dict:
    """Train as ``cfg`` says; returns a summary (also in RUN_DIR/run.json)."""
    cfg.check()
    return distributed(fit, cfg, cfg.device)


def check_training(cfg: TrainConfig, store=None) -> None:
    """Everything ``train(cfg)`` refuses before it reads a pixel, without reading one: the settings, the
    dataset's splits, and what the task refuses (the lung segmenter of ``--lungs``, the sources of ``--debias
    source`` and ``--balance-sources``, the masks of segmentation). What runs many trainings (``covidnet
    study``) checks them all with this before the first starts."""
    task = cfg.check()
    store = store if store is not None else open_store(cfg.data)
    for folder in cfg.images:
        image_files(Path(folder))
    train_rows, _ = data_rows(cfg, store, task)
    task.check(cfg, store, train_rows)


def data_rows(cfg: TrainConfig, store, task: Task, world: int = 1) -> tuple[np.ndarray, np.ndarray]:
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


@dataclass
class Run:
    """One training run's state, shared by the stages and handed to the task's hooks."""

    cfg: TrainConfig
    dist: Dist
    device: torch.device
    task: Task = None
    store: object = None
    path: Path = None
    contract: Contract = None
    train_rows: np.ndarray = None
    y_train: np.ndarray = None  # the training rows' targets as the sampler reads them (zeros: none)
    targets: torch.Tensor | None = None  # the training and validation rows' targets, on the device
    arrays: dict = field(default_factory=dict)  # staged arrays by name (``train.feed``): "pixels", "masks"
    train_pos: np.ndarray = None
    val_pos: np.ndarray = None
    model: torch.nn.Module = None
    net: torch.nn.Module = None  # what a step calls: the task's trainable module, DDP- and compile-wrapped
    opt: torch.optim.Optimizer = None
    sched: object = None
    start_epoch: int = 0
    start_step: int = 0
    best: float = math.nan
    best_epoch: int | None = None
    accumulators: dict | None = None
    history: list = field(default_factory=list)
    steps_done: int = 0  # optimisation steps taken by this process (for --max-steps)
    seen: np.ndarray = None  # positions of the training rows the last epoch drew

    @property
    def mem_format(self):
        return torch.channels_last if self.cfg.channels_last else torch.contiguous_format

    @property
    def amp(self):
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.cfg.amp and self.device.type == "cuda")

    def input(self, pos: np.ndarray, params: torch.Tensor | None, host: torch.Tensor | None = None) -> torch.Tensor:
        """The network's input for positions ``pos``, augmented with ``params`` (None: as stored); ``host``:
        their pixels, when read ahead."""
        x = uint8_to_unit((self.arrays["pixels"][pos] if host is None else host).to(self.device, non_blocking=True))
        if params is not None:
            x = augment(x, params)
        return self.contract.model_input(x, self.mem_format)

    def best_score(self) -> dict:
        """The best validation figure so far, as checkpoints and run.json record it."""
        return {"metric": self.task.monitor, "mode": self.task.mode, "value": self.best, "epoch": self.best_epoch}

    def payload(self, epoch: int, step: int, accumulators=None) -> dict:
        cfg = self.cfg
        return {
            "arch": self.model.arch,
            "arch_args": self.model.arch_args,
            **self.task.meta(),
            "preprocess": self.contract.to_dict(),
            "memory_format": "channels_last" if cfg.channels_last else "contiguous",
            "train_config": cfg.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "epoch": epoch,
            "step": step,
            "best_score": self.best_score(),
            "accumulators": accumulators,
            **self.task.state(),
        }


def fit(cfg: TrainConfig, dist: Dist, device: torch.device) -> dict:
    """The run, in this process's place (``train.dist.distributed`` calls it)."""
    r = Run(cfg, dist, device)
    stage_data(r)
    build(r)
    log = RunLog(r.path, dist.main)
    log.keep_epochs(r.start_epoch)
    write_status(r.path, dist, "running", epoch=r.start_epoch, step=r.start_step)
    with stop_on_signals() as stop, status_on_failure(r.path, dist):
        for epoch in range(r.start_epoch, cfg.epochs):
            a = train_epoch(r, epoch, stop)
            end_epoch(r, epoch, a, log)
            r.start_step = 0
            if cfg.max_steps and r.steps_done >= cfg.max_steps:
                break
    return finish_run(r.path, dist, device, cfg.epochs, r.history, r.best_score())


def stage_data(r: Run) -> None:
    """The rows the task can use, their targets, and their arrays on the device (or pinned host memory, or
    streamed when they do not fit); the preprocessing contract from the store, with the model's half."""
    cfg = r.cfg
    r.store = store = open_store(cfg.data)
    r.task = task = cfg.make_task()
    r.path = check_run(cfg)  # before the films are staged beside it
    if cfg.images:  # unlabelled films beside the build's training split, in one store (self-supervised only)
        r.store = store = open_store(stage_films(store, cfg.images, Path(cfg.out), cfg.progress and r.dist.main))
    r.train_rows, val_rows = data_rows(cfg, store, task, r.dist.world)
    r.contract = task.contract(store, cfg)
    y_train, y_val = task.targets(store, r.train_rows), task.targets(store, val_rows)
    r.y_train = y_train if y_train is not None else np.zeros(len(r.train_rows), np.int64)
    if y_train is not None:
        r.targets = torch.from_numpy(np.concatenate([y_train, y_val])).to(r.device)
    rows = np.concatenate([r.train_rows, val_rows])
    arrays = task.arrays(store, r.contract)
    budget = memory_budget(cfg.host_memory_gb) // len(arrays)
    r.arrays = {name: stage(source, rows, r.device, budget, transform) for name, (source, transform) in arrays.items()}
    if r.arrays["pixels"].streamed and r.dist.main and cfg.progress:
        print(
            f"covidnet train: {len(rows)} images do not fit the host-memory budget; streaming them from {store.root}",
            file=sys.stderr,
        )
    r.train_pos, r.val_pos = np.arange(len(r.train_rows)), np.arange(len(r.train_rows), len(rows))
    task.setup(r)


def build(r: Run) -> None:
    """The task's network (seeded), optimiser and scheduler; the saved state when resuming. Nothing is
    written before the model is built and its weights loaded."""
    cfg, task = r.cfg, r.task
    torch.manual_seed(cfg.seed)
    r.model = task.create_model(cfg, r).to(r.device, memory_format=r.mem_format)
    net, params = task.trainable(r.model)
    if cfg.optimizer == "sgd":
        r.opt = torch.optim.SGD(params, lr=cfg.effective_lr(), momentum=0.9, weight_decay=cfg.weight_decay)
    else:
        r.opt = torch.optim.Adam(params, lr=cfg.effective_lr(), weight_decay=cfg.weight_decay)
    r.sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
        r.opt, mode=task.mode, factor=cfg.plateau_factor, patience=cfg.plateau_patience
    )
    r.best = math.inf if task.mode == "min" else -math.inf
    if cfg.resume:
        resume(r, r.path / "last.pt")
    start_run(r.path, cfg, r.dist)
    r.net = wrap_for_training(net, r.dist, r.device, cfg.compile)


def resume(r: Run, path: Path) -> None:
    """The state of ``path`` (a run's last.pt) into the run: weights, optimiser, scheduler, the task's own
    state, where it stopped, the best figure so far and the interrupted epoch's accumulators."""
    ckpt = read_checkpoint(path)
    if ckpt.get("task", "classification") != r.task.name or classifier_arch(ckpt) != r.cfg.arch:
        raise ConfigError(
            f"{path}: a {ckpt.get('task', 'classification')} checkpoint of {classifier_arch(ckpt)}, not of "
            f"--task {r.task.name} --arch {r.cfg.arch}"
        )
    r.model.load_state_dict(ckpt["model"])
    r.task.load_state(ckpt)
    try:
        r.opt.load_state_dict(ckpt["optimizer"])
    except ValueError as e:  # other trained parameters: written by a version that trained more or fewer
        raise ConfigError(f"{path}: its optimiser state does not fit this run's parameters ({e}); start the run "
                          "again without --resume") from None  # fmt: skip
    r.sched.load_state_dict(ckpt["scheduler"])
    r.start_epoch, r.start_step = ckpt["epoch"], ckpt["step"]
    r.best, r.best_epoch = ckpt["best_score"]["value"], ckpt["best_score"].get("epoch")
    a = ckpt.get("accumulators")
    if a and "figures" not in a:  # written before the one loop: the figure was "correct"
        a = {**a, "figures": {getattr(r.task, "agreement_name", "acc"): a.pop("correct", 0.0)}}
    r.accumulators = a


def train_epoch(r: Run, epoch: int, stop: dict) -> dict:
    """One epoch's steps (from the saved step when resuming); a stop request writes a resumable checkpoint
    and raises ``TrainingInterrupted``. Returns the epoch's accumulators; ``r.seen``: the positions drawn."""
    cfg, dist, device, task = r.cfg, r.dist, r.device, r.task
    batches = epoch_batches(r.y_train, epoch, cfg.seed, cfg.batch_size, **task.sampling(r))
    task.start_epoch(r, batches)
    first = r.start_step if epoch == r.start_epoch else 0
    resumed = r.accumulators if (r.accumulators and epoch == r.start_epoch) else None
    a = resumed or {"loss": 0.0, "figures": {}, "n": 0.0, "seconds": 0.0}
    sums = {"loss": torch.zeros((), device=device, dtype=torch.float64)}  # summed on the device: no sync per step
    t_epoch = time.perf_counter()
    bar = progress_bar(cfg.progress and dist.main, len(batches), first, epoch, cfg.epochs)
    r.net.train()
    task.train_mode(r.model, cfg)
    last = len(batches) if not cfg.max_steps else min(len(batches), first + cfg.max_steps - r.steps_done)
    steps = [r.train_pos[shard(b, dist)] for b in batches[first:last]]
    readers = [prefetch(array, steps) for array in r.arrays.values()]
    for step, pos, *hosts in zip(range(first, last), steps, *readers):
        seed = step_seed(cfg.seed, epoch, step)
        torch.manual_seed(seed)  # dropout and anything else drawing from the global generator
        identity = cfg.augment.identity
        params = None if identity else sample_params(len(pos), cfg.augment, torch.Generator().manual_seed(seed))
        loss, figures = optimise(r, task.batch(r, pos, params, dict(zip(r.arrays, hosts))))
        r.steps_done += 1
        sums["loss"] += loss * len(pos)  # the batch's mean loss, weighed by its images
        for k, v in figures.items():  # already summed over the batch
            sums[k] = sums.get(k, 0.0) + v
        a["n"] += len(pos)
        if bar is not None:
            bar.update(1)
            if step % 20 == 0:
                elapsed = a["seconds"] + time.perf_counter() - t_epoch
                bar.set_postfix(loss=f"{loss.item():.3f}", img_s=f"{a['n'] * dist.world / max(elapsed, 1e-9):.0f}")
        if stop_requested(stop, dist, device):
            if dist.main:
                save_checkpoint(r.path / "last.pt", r.payload(epoch, step + 1, fold(a, sums, t_epoch)))
            write_status(r.path, dist, "interrupted", epoch=epoch, step=step + 1)
            raise TrainingInterrupted(
                f"interrupted at epoch {epoch + 1} step {step + 1}; resumable checkpoint "
                f"in {r.path / 'last.pt'}: run the same command with --resume"
            )
    if bar is not None:
        bar.close()
    r.seen = np.concatenate(batches[:last])
    return fold(a, sums, t_epoch)  # one device sync per epoch


def optimise(r: Run, batch: dict) -> tuple[torch.Tensor, dict]:
    """One optimisation step on a batch: the task's loss, backward, Adam. Returns the loss to log (the task's
    own, where it adds another to what it steps on) and the task's figures summed over the batch."""
    try:
        with r.amp:
            loss, figures = r.task.step(r.net, batch)
        logged = figures.pop("loss", loss)
        r.opt.zero_grad(set_to_none=True)
        loss.backward()
        r.opt.step()
    except torch.OutOfMemoryError:
        raise CovidnetError(
            f"out of GPU memory training {r.cfg.arch} at {r.contract.input_size} px with "
            f"--batch-size {r.cfg.batch_size}; lower --batch-size or --size"
        ) from None
    return logged.detach(), {k: v.detach() for k, v in figures.items()}


def fold(a: dict, sums: dict, t_epoch: float) -> dict:
    """The epoch's accumulators as plain numbers (a resumed epoch starts from those saved)."""
    figures = dict(a["figures"])
    for k, v in sums.items():
        if k != "loss":
            figures[k] = figures.get(k, 0.0) + float(v)
    return {
        "loss": a["loss"] + float(sums["loss"]),
        "figures": figures,
        "n": a["n"],
        "seconds": a["seconds"] + time.perf_counter() - t_epoch,
    }


def end_epoch(r: Run, epoch: int, a: dict, log: RunLog) -> None:
    """Precise BN, validation, the scheduler's step, the log row and line, and the checkpoints."""
    cfg, dist, task = r.cfg, r.dist, r.task
    names = sorted(a["figures"])
    loss_sum, n, seconds, *sums = dist.all_sum(
        [a["loss"], a["n"], a["seconds"], *(a["figures"][k] for k in names)], r.device
    )
    if cfg.precise_bn and not cfg.freeze_backbone:
        recalibrate_bn(r, epoch)
    val = validate(r)
    figure = val[task.monitor.removeprefix("val_")]
    r.sched.step(figure)
    fields_, shown = task.log(val)
    train_figures = {f"train_{k}": v / n for k, v in zip(names, sums)}
    row = {"epoch": epoch + 1, "lr": r.opt.param_groups[0]["lr"], "train_loss": loss_sum / n, **train_figures}
    row.update({"val_loss": val["loss"], **fields_})
    extra, text = task.after_epoch(r)
    row.update(extra)
    row.update(
        {
            "images_seen": int(len(r.seen)),
            "unique_images": int(len(np.unique(r.seen))),
            "images_per_s": n / max(seconds / dist.world, 1e-9),
        }
    )
    r.history.append(row)
    log.write(row)
    if dist.main and cfg.progress:
        figures_text = "".join(f" {k.removeprefix('train_')} {v:.3f}" for k, v in train_figures.items())
        print(
            f"epoch {epoch + 1}/{cfg.epochs}: train loss {row['train_loss']:.4f}{figures_text} | val loss "
            f"{val['loss']:.4f} {shown}{text} | {row['images_per_s']:.0f} img/s",
            file=sys.stderr,
        )
    improved = figure < r.best if task.mode == "min" else figure > r.best
    if improved:
        r.best, r.best_epoch = figure, epoch + 1
    if dist.main:  # best.pt before last.pt: a run killed between the two redoes the epoch and writes both again
        p = r.payload(epoch + 1, 0)
        if improved:
            metrics = {k: v for k, v in val.items() if k != "confusion"}
            save_checkpoint(r.path / "best.pt", {**p, "optimizer": None, "scheduler": None, "val_metrics": metrics})
        save_checkpoint(r.path / "last.pt", p)


def recalibrate_bn(r: Run, epoch: int) -> None:
    """Recompute BatchNorm running statistics from unaugmented training images with the current weights
    ("precise BN", Wu & Johnson 2021), using torch's own ``swa_utils.update_bn``. The running averages
    that training keeps lag behind weights that are still moving: on phantom data they cost up to half
    the validation accuracy of the very same weights. Every process uses the same images, so the
    statistics are identical on every rank. A lung-field model's frozen segmenter keeps its statistics."""
    from torch.optim.swa_utils import update_bn

    from ..models.lung_field import classifier_of

    cfg = r.cfg
    rng = np.random.default_rng([cfg.seed, epoch, 0xB4])
    pos = r.train_pos[rng.permutation(len(r.train_pos))[: cfg.precise_bn]]
    batches = (r.input(pos[k : k + cfg.eval_batch_size], None) for k in range(0, len(pos), cfg.eval_batch_size))
    net = classifier_of(r.model)
    if net is not r.model:
        batches = (r.model.field(x) for x in batches)
    with r.amp:
        update_bn(batches, net)


def validate(r: Run) -> dict:
    """The task's validation figures (``Task.validate``), with the loop's forward over stored pixels: the plain
    model runs, not the DDP wrapper (shards differ in length, and DDP's per-forward collectives would wait for
    each other), in eval mode, through the same loop as ``covidnet eval``."""

    def outputs(positions: np.ndarray, forward) -> torch.Tensor:
        get = lambda pos: r.arrays["pixels"][pos]  # noqa: E731
        return predict_outputs(r.model, get, positions, r.cfg.eval_batch_size, r.device, forward)

    return r.task.validate(r, outputs)
