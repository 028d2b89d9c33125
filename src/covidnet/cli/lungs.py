"""``covidnet lungs train|eval|predict``: lung-field segmentation (``covidnet.lungs``)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from ..errors import CovidnetError
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
        help="train a lung segmenter on a build's annotated masks",
        description="Train a segmenter from the registry (`covidnet models`) from random initialisation on "
        "the train split's annotated lung masks, selecting by the validation split's Dice.",
    )
    t.set_defaults(func=run_train)
    if flags and (cls := config_class(t, "lungs.train", "LungsConfig")):  # None without the [torch] extra
        add_config_flags(t, cls)
    e = lsub.add_parser(
        "eval",
        help="Dice, IoU and HD95 with patient-bootstrap CIs, and a page of the worst cases",
        description="Evaluate a lung segmenter on a build's split (its images with annotated masks).",
    )
    e.set_defaults(func=run_eval)
    if flags:
        _eval_flags(e)
    q = lsub.add_parser(
        "predict",
        help="lung mask PNGs for raw images",
        description="Write each image's lung mask (0 background, 255 lung, the image's own pixel size) as "
        "OUT/STEM.lungs.png; with --overlay also the image with the mask over it.",
    )
    q.set_defaults(func=run_predict)
    if flags:
        _predict_flags(q)


def _eval_flags(p) -> None:
    p.add_argument(
        "--checkpoint",
        required=True,
        help="a checkpoint written by `covidnet lungs train` (best.pt), or its `covidnet export` (.onnx)",
    )
    p.add_argument("--data", required=True, help="a dataset folder written by `covidnet data build --lung-masks`")
    p.add_argument("--split", default="test", choices=("train", "val", "test"), help="split of --data (default test)")
    p.add_argument(
        "--resamples", type=int, default=1000, help="bootstrap resamples of patients (default 1000; 0: no CIs)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")
    p.add_argument("--json", metavar="OUT", help="write the metrics as JSON to OUT")
    p.add_argument("--report", metavar="OUT_DIR", help="write an HTML page with the worst cases to OUT_DIR")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda (default auto)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _predict_flags(p) -> None:
    p.add_argument(
        "checkpoint",
        metavar="MODEL",
        help="a checkpoint written by `covidnet lungs train` (best.pt), or its `covidnet export` (.onnx)",
    )
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR")
    p.add_argument("--out", required=True, help="folder for the mask PNGs")
    p.add_argument("--overlay", action="store_true", help="also write the image with its mask over it")
    p.add_argument("--json", action="store_true", help="one JSON object per image, one per line")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run_train(args) -> int:
    from ..lungs.train import LungsConfig, train_lungs

    cfg = config_from_args(LungsConfig, args)
    summary = train_lungs(cfg)
    if summary.get("final") is not None and int(os.environ.get("RANK", "0")) == 0:
        print(
            f"done: {cfg.out} — best validation Dice {summary['best_val_dice']:.4f}; last epoch's "
            f"{summary['final']['val_dice']:.4f}; {summary['images_per_s']:.0f} images/s on {summary['device']}"
        )
    return 0


def run_eval(args) -> int:
    from ..audit import LUNG_BOX
    from ..files import write_json
    from ..lungs.evaluate import evaluate_lungs
    from ..metrics.bootstrap import format_ci
    from ..metrics.segmentation import PARTS
    from .common import table

    m = evaluate_lungs(
        args.checkpoint,
        args.data,
        args.split,
        args.resamples,
        args.seed,
        args.device,
        args.report,
        LUNG_BOX,
        progress=not args.quiet,
    )
    if args.json:
        write_json(args.json, m)
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
    from ..lungs.evaluate import predict_lungs

    ok = failed = 0
    results = predict_lungs(args.checkpoint, args.inputs, args.out, args.overlay, args.device, args.batch_size)
    if not args.quiet and sys.stderr.isatty():
        from tqdm import tqdm

        results = tqdm(results, unit="img", file=sys.stderr, leave=False)
    for r in results:
        ok, failed = ok + (r["status"] == "ok"), failed + (r["status"] != "ok")
        if args.json:
            print(json.dumps(r), flush=True)
        elif r["status"] == "ok":
            extra = f"  overlay: {r['overlay']}" if r["overlay"] else ""
            print(f"{r['path']}: lungs {r['lung_fraction']:.1%} of the square  mask: {r['mask']}{extra}", flush=True)
        else:
            print(f"{r['path']}: FAILED: {r['error']}", flush=True)
    print(f"{ok} images segmented, {failed} failed (research tool: not a diagnosis)", file=sys.stderr)
    if ok == 0:
        raise CovidnetError("no image could be processed" if failed else "no images found in the given paths")
    return 0
