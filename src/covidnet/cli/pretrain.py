"""``covidnet pretrain``: self-supervised pretraining (SimSiam or MoCo v2) of a classifier's backbone on a
build's training images, labelled or not; the same run as ``covidnet train --task self-supervised``."""

from __future__ import annotations

from .flags import add_config_flags, config_class


def register(sub, flags: bool = True) -> None:
    p = sub.add_parser(
        "pretrain",
        help="self-supervised pretraining (SimSiam or MoCo v2) on a build's training images and unlabelled films",
        description="Pretrain a registered classifier's backbone without labels on the training split of a "
        "dataset built by `covidnet data build` (never its validation or test split) and on the films of any "
        "--images folders, read through that build's contract (a film that duplicates one of the build's is left "
        "out, listed in RUN/films/films.csv), as `covidnet train --task self-supervised` does; `covidnet train "
        "--init RUN/best.pt` then fine-tunes it. Research tool, not a diagnosis.",
    )
    p.set_defaults(func=run)
    if flags and (cls := config_class(p, "train", "TrainConfig")):  # None without the [torch] extra
        from ..tasks import COMMON_OPTIONS, SelfSupervisedTask

        add_config_flags(p, cls, only=set(COMMON_OPTIONS + list(SelfSupervisedTask.options)) - {"task"})


def run(args) -> int:
    from .train import run as train

    return train(args, task="self-supervised")
