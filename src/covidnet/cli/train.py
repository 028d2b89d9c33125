"""``covidnet train``: one flag per field of ``TrainConfig``."""

from __future__ import annotations

import argparse
import os

TRAIN_HELP = {
    "data": "a dataset folder written by `covidnet data build`",
    "out": "run folder: config, log.csv, last.pt, best.pt, run.json",
    "arch": "architecture (see `covidnet models`)",
    "epochs": "epochs", "batch_size": "images per step, over all processes together",
    "lr": "Adam learning rate", "scale_lr": "multiply --lr by batch-size/8 (linear rule for larger batches)",
    "weight_decay": "Adam weight decay", "plateau_factor": "ReduceLROnPlateau factor on the validation loss",
    "plateau_patience": "ReduceLROnPlateau patience (epochs)", "size": "input side in px; 0: the dataset's stored size",
    "in_channels": "1 (grey) or 3 (grey repeated)", "binary": "negative/positive instead of normal/pneumonia/COVID-19",
    "covid_percent": "share of each batch drawn from COVID-19, in [0, 1); 0 turns rebalancing off",
    "class_weights": "loss weights: reference (COVID-19 x4), none, balanced, or one number per class (e.g. 1,1,4)",
    "translate": "augmentation: max shift, fraction of the side", "rotate": "augmentation: max rotation, degrees",
    "hflip": "augmentation: horizontal flip probability", "brightness": "augmentation: max brightness change, fraction",
    "zoom_min": "augmentation: smallest zoom", "zoom_max": "augmentation: largest zoom",
    "init": "random, imagenet (torchvision baselines), or a checkpoint path (classifier re-initialised)",
    "seed": "seed of every random choice", "device": "auto, cpu, cuda or cuda:N",
    "amp": "bf16 autocast on GPU", "channels_last": "channels-last memory format",
    "compile": "torch.compile: auto (GPU only), on, off", "eval_batch_size": "batch size for validation",
    "precise_bn": "training images (unaugmented) that recompute BatchNorm statistics before each validation; 0: off",
    "resume": "continue the run in --out from its last.pt", "progress": "progress bars and per-epoch lines",
    "task": "classification; severity (COVIDNet-S geographic and opacity extent, 0-8; needs a build with --severity); "
            "risk (COVID-RiskNet: COVID-19 images in bins of days since symptom onset)",
    "freeze_backbone": "train only the head on the frozen features of --init (COVIDNet-S's setting)",
    "risk_bins": "--task risk: inner bin edges in days, e.g. 3,5,10 for [0-3), [3-5), [5-10), >=10",
}


def _add_dataclass_args(p: argparse.ArgumentParser, cls, helps: dict, required=("data", "out")) -> None:
    """One flag per dataclass field, so the CLI and the config (written next to every run) cannot drift."""
    import dataclasses

    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        if f.name in required:
            p.add_argument(flag, required=True, help=helps.get(f.name))
        elif f.type in ("bool", bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=helps.get(f.name))
        else:
            kind = {"int": int, "float": float}.get(str(f.type), str)
            p.add_argument(flag, type=kind, default=f.default, help=f"{helps.get(f.name, '')} (default {f.default})")


def _raise(e: BaseException):
    raise e


def register(sub, flags: bool = True) -> None:
    p = sub.add_parser("train", help="train a model on a built dataset (the paper's recipe by default)",
                       description="Train on a dataset built by `covidnet data build`. Defaults are the published "
                                   "recipe; the same command runs under torchrun for several GPUs or machines.")
    p.set_defaults(func=run)
    if not flags:
        return
    try:
        from ..train import TrainConfig
    except ModuleNotFoundError as e:  # installed without the [torch] extra: `covidnet train` says what to install
        p.add_argument("args", nargs=argparse.REMAINDER)
        p.set_defaults(func=lambda args, e=e: _raise(e))
    else:
        _add_dataclass_args(p, TrainConfig, TRAIN_HELP)


def run(args) -> int:
    import dataclasses

    from ..train import TrainConfig, train

    cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})
    summary = train(cfg)
    if summary.get("final") is not None and int(os.environ.get("RANK", "0")) == 0:
        f = summary["final"]
        last = {"classification": ("val accuracy", "val_acc"), "risk": ("val accuracy", "val_accuracy"),
                "severity": ("val R² geographic / opacity", ("val_geographic_r2", "val_opacity_r2"))}[cfg.task]
        value = " / ".join(f"{f[k]:.3f}" for k in ((last[1],) if isinstance(last[1], str) else last[1]))
        print(f"done: {cfg.out} — best validation loss {summary['best_val_loss']:.4f}; last epoch {last[0]} "
              f"{value}; {summary['images_per_s']:.0f} images/s on {summary['device']}")
    return 0
