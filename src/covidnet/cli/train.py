"""``covidnet train``: one flag per field of ``TrainConfig``."""

from __future__ import annotations

import os

from .flags import add_config_flags, config_class, config_from_args


def register(sub, flags: bool = True) -> None:
    p = sub.add_parser(
        "train",
        help="train a model on a built dataset (the paper's recipe by default)",
        description="Train on a dataset built by `covidnet data build`. Defaults are the published "
        "recipe; the same command runs under torchrun for several GPUs or machines.",
    )
    p.set_defaults(func=run)
    if flags and (cls := config_class(p, "train", "TrainConfig")):  # None without the [torch] extra
        add_config_flags(p, cls)


def run(args, **values) -> int:
    """``covidnet train`` (and ``covidnet lungs train``, which gives ``task="segmentation"`` in ``values``)."""
    from ..train import TrainConfig, train

    cfg = config_from_args(TrainConfig, args, **values)
    summary = train(cfg)
    if summary.get("final") is not None and int(os.environ.get("RANK", "0")) == 0:
        final, best = cfg.make_task().final(summary["final"]), summary["best_score"]
        print(
            f"done: {cfg.out} — best {best['metric'].replace('_', ' ')} {best['value']:.4f} (epoch {best['epoch']}); "
            f"last epoch {final}; {summary['images_per_s']:.0f} images/s on {summary['device']}"
        )
    return 0
