"""``covidnet audit``: does the model see the disease or the hospital? Shortcut tests with verdicts."""

from __future__ import annotations

from pathlib import Path

from .common import table


def register(sub, flags: bool = True) -> None:
    p = sub.add_parser(
        "audit",
        help="does the model see the disease or the hospital? within-source, source, occlusion, leakage tests",
        description="Shortcut audit of a checkpoint on a built dataset: within-source discrimination, source "
        "predictability, leave-one-source-out, occlusion (of the lung masks where the dataset has them), attention "
        "inside the lungs, leakage and population confounders, each with a "
        "figure, a threshold and a verdict.",
    )
    p.set_defaults(func=run)
    if not flags:
        return
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True, help="a dataset folder written by `covidnet data build`")
    p.add_argument(
        "--split",
        default="test",
        help="split for the within-source and occlusion tests (train, val, test or all; default test)",
    )
    p.add_argument("--max-images", type=int, default=0, help="audit a random subset of this many images (0: all)")
    p.add_argument(
        "--loso-epochs",
        type=int,
        default=0,
        help="leave-one-source-out: retrain without each source for this many epochs (0: skip; optional)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--report", metavar="OUT_DIR", help="write an HTML report (summary table first) to OUT_DIR")
    p.add_argument("--json", metavar="OUT", help="write the audit as JSON to OUT")
    p.add_argument("--device", default="auto")


def run(args) -> int:
    from ..audit import run_audit
    from ..files import write_json

    a = run_audit(
        args.checkpoint, args.data, args.split, args.device, args.max_images, args.seed, args.report, args.loso_epochs
    )
    if args.json:
        write_json(args.json, a)
    print(
        table(
            ["test", "verdict", "what it means"],
            [
                [s["test"], s["verdict"].upper() if s["verdict"] == "fail" else s["verdict"], s["reading"]]
                for s in a["summary"]
            ],
        )
    )
    if args.report:
        print(f"report: {Path(args.report) / 'index.html'}")
    return 0
