"""``covidnet lungs train|eval|predict``: lung-field segmentation (``covidnet.lungs``)."""

from __future__ import annotations

from pathlib import Path

from .common import print_results
from .flags import add_config_flags, config_class, config_from_args


def register(sub, flags: bool = True) -> None:
    p = sub.add_parser(
        "lungs",
        help="lung-field segmentation: train, evaluate, predict masks",
        description="Segment the lung fields of chest radiographs: train a segmenter on a build's lung "
        "masks (data build --lung-masks), evaluate it (Dice, IoU, HD95 with patient-bootstrap CIs), "
        "write masks for raw images. Research tool, not a diagnosis.",
    )
    lsub = p.add_subparsers(dest="lungs_command", required=True, metavar="LUNGS_COMMAND")
    t = lsub.add_parser(
        "train",
        help="train a lung segmenter on a build's annotated masks (covidnet train --task segmentation)",
        description="Train a segmenter from the registry (`covidnet models`) from random initialisation on "
        "the train split's annotated lung masks, selecting by the validation split's Dice: the same run as "
        "`covidnet train --task segmentation`.",
    )
    t.set_defaults(func=run_train)
    if flags and (cls := config_class(t, "train", "TrainConfig")):  # None without the [torch] extra
        from ..tasks import COMMON_OPTIONS, SegmentationTask

        add_config_flags(t, cls, only=set(COMMON_OPTIONS + list(SegmentationTask.options)) - {"task"})
    e = lsub.add_parser(
        "eval",
        help="Dice, IoU and HD95 with patient-bootstrap CIs, and a page of the worst cases",
        description="Evaluate a lung segmenter on a build's split (its images with annotated masks).",
    )
    e.set_defaults(func=run_eval)
    if flags and (cls := config_class(e, "lungs.evaluate", "LungsEvalConfig")):
        add_config_flags(e, cls)
    q = lsub.add_parser(
        "predict",
        help="lung mask PNGs for raw images",
        description="Write each image's lung mask (0 background, 255 lung, the image's own pixel size) as "
        "OUT/STEM.lungs.png; with --overlay also the image with the mask over it.",
    )
    q.set_defaults(func=run_predict)
    if flags and (cls := config_class(q, "lungs.evaluate", "LungsPredictConfig")):
        add_config_flags(q, cls)


def run_train(args) -> int:
    from .train import run

    return run(args, task="segmentation")


def run_eval(args) -> int:
    from ..audit import LUNG_BOX
    from ..lungs.evaluate import LungsEvalConfig, evaluate_lungs
    from ..metrics.bootstrap import format_ci
    from ..metrics.segmentation import PARTS
    from .common import table

    m = evaluate_lungs(config_from_args(LungsEvalConfig, args, box=LUNG_BOX))
    print(
        f"lungs: {m['n']} {m['split']} images of {m['n_patients']} patients; 95 % CIs from "
        f"{m['bootstrap']['resamples']} bootstrap resamples of patients; HD95 in px at {m['stored_size']} px"
    )
    rows = [[p, *(format_ci(m[p][k]) for k in ("dice", "iou", "hd95")), str(m["scored"][p])] for p in PARTS]
    b = m["box_baseline"]
    rows.append(["fixed box", *(format_ci(b["lungs"][k]) for k in ("dice", "iou", "hd95")), str(b["n"])])
    print(table(["", "Dice", "IoU", "HD95", "images"], rows))
    print(
        "right: the patient's right lung (image left)"
        + (f"; JSON: {args.json}" if args.json else "")
        + (f"; report: {Path(args.report) / 'index.html'}" if args.report else "")
    )
    return 0


def run_predict(args) -> int:
    from ..lungs.evaluate import LungsPredictConfig, predict_lungs

    cfg = config_from_args(LungsPredictConfig, args)

    def line(r: dict) -> str:
        extra = f"  overlay: {r['overlay']}" if r["overlay"] else ""
        return f"lungs {r['lung_fraction']:.1%} of the square  mask: {r['mask']}{extra}"

    return print_results(predict_lungs(cfg), cfg.json, cfg.progress, line, "segmented")
