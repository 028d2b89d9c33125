"""``covidnet eval``: metrics with bootstrap CIs, calibration, per-source breakdown and an HTML report,
for a checkpoint of any task."""

from __future__ import annotations

import sys
from pathlib import Path

from .common import print_evaluation


def register(sub, flags: bool = True) -> None:
    p = sub.add_parser(
        "eval",
        help="metrics with bootstrap CIs, calibration, per-source breakdown, HTML report",
        description="Evaluate a checkpoint on a built dataset's split (--data) or, for a classifier, on "
        "raw images named in a COVIDx label file (--labels FILE --images DIR).",
    )
    p.set_defaults(func=run)
    if not flags:
        return
    p.add_argument("--checkpoint", required=True, help="a checkpoint written by `covidnet train` (best.pt)")
    p.add_argument("--data", help="a dataset folder written by `covidnet data build`")
    p.add_argument("--split", default="test", choices=("train", "val", "test"), help="split of --data (default test)")
    p.add_argument("--labels", help="a COVIDx label file: patientid filename label [source]")
    p.add_argument("--images", help="the folder of the raw images --labels names (PNG, JPEG, WebP, DICOM)")
    p.add_argument(
        "--resamples", type=int, default=1000, help="bootstrap resamples of patients (default 1000; 0: no CIs)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")
    p.add_argument("--json", metavar="OUT", help="write the metrics as JSON to OUT")
    p.add_argument("--report", metavar="OUT_DIR", help="write an HTML report with figures to OUT_DIR")
    p.add_argument("--cam-method", default="gradcam", help="heat maps in the report: gradcam or gradcam++")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda (default auto)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args) -> int:
    from ..evaluate import evaluate_checkpoint
    from ..files import write_json

    m = evaluate_checkpoint(
        args.checkpoint,
        data=args.data,
        split=args.split,
        labels=args.labels,
        images=args.images,
        resamples=args.resamples,
        seed=args.seed,
        device=args.device,
        report=args.report,
        cam_method=args.cam_method,
        progress=not args.quiet,
    )
    for f in m["failed"][:20]:
        print(f"covidnet: warning: {f['item']}: {f['error']}", file=sys.stderr)
    if args.json:
        write_json(args.json, m)
    print_evaluation(m)
    print(
        f"{m['processed']} images evaluated, {m['failed_count']} failed"
        + (f"; JSON: {args.json}" if args.json else "")
        + (f"; report: {Path(args.report) / 'index.html'}" if args.report else "")
    )
    return 0
