"""A training run's folder and its life: checked before it starts or resumes, its config.json, its per-epoch
log (CSV, and TensorBoard when installed), its status in run.json (running, interrupted, failed, complete),
progress bars, and SIGTERM/SIGINT, which end a run between two steps with a resumable checkpoint.
"""

from __future__ import annotations

import contextlib
import csv
import json
import signal
import sys
import threading
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..config import check_resumed
from ..errors import ConfigError, CovidnetError
from ..files import atomic_path, write_json
from .dist import Dist


class TrainingInterrupted(CovidnetError):
    """SIGTERM or SIGINT: a resumable checkpoint was written; exit 143 as a terminated process does."""

    exit_code = 143


def check_run(cfg) -> Path:
    """The run folder ``cfg.out`` can be started (or resumed, ``cfg.resume``) as asked; a resumed run's
    settings must be those in its config.json but for those that may change (``config.check_resumed``). A
    folder holding no checkpoint (a start that failed before its first epoch) may be started again."""
    run = Path(cfg.out)
    if cfg.resume:
        if not (run / "last.pt").is_file():
            raise ConfigError(f"{run}: nothing to resume (no last.pt); start it without --resume")
        saved = read_json(run / "config.json")
        if saved.get("command") == "lungs train":  # before the one loop: a segmentation run by another name
            saved.setdefault("task", "segmentation")
        check_resumed(cfg, saved, str(run))
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

    def keep_epochs(self, epochs: int) -> None:
        """Drop the rows of epochs after ``epochs`` (a resumed run's last checkpoint): a run killed after an
        epoch's row and before its ``last.pt`` redoes that epoch, which must be logged once."""
        if not self.enabled or not self.path.exists():
            return
        with open(self.path, newline="") as f:
            rows = list(csv.reader(f))
        kept = rows[:1] + [r for r in rows[1:] if r and int(float(r[0])) <= epochs]
        if len(kept) != len(rows):
            with atomic_path(self.path) as tmp, open(tmp, "w", newline="") as f:
                csv.writer(f).writerows(kept)

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


def finish_run(path: Path, dist: Dist, device, epochs: int, history: list[dict], best: dict) -> dict:
    """A run's summary, written to run.json as complete: ``best_score`` (``best``: the monitored figure, its
    direction, its best value and epoch, as the checkpoints record it), the last epoch's log row, the median
    images per second, where best.pt and last.pt are."""
    rates = [h["images_per_s"] for h in history[1:]] or [h["images_per_s"] for h in history]
    summary = {
        "epochs": epochs,
        "best_score": best,
        "final": history[-1] if history else None,
        "images_per_s": float(np.median(rates)) if rates else None,
        "world_size": dist.world,
        "device": str(device),
        "best": str(path / "best.pt"),
        "last": str(path / "last.pt"),
    }
    write_status(path, dist, "complete", **summary)
    return summary


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


def read_json(path: Path) -> dict:
    """A run's JSON file, or one line naming it when it is not readable JSON."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: not readable ({type(e).__name__}: {e}); start afresh in another --out") from None
