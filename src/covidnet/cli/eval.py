"""``covidnet eval``: metrics with bootstrap CIs, calibration, per-source breakdown and an HTML report,
for a checkpoint of any task."""

from __future__ import annotations

import sys
from pathlib import Path

from .common import print_evaluation
from .flags import add_config_flags, config_class, config_from_args


def register(sub, flags: bool = True) -> None:
    p = sub.add_parser(
        "eval",
        help="metrics with bootstrap CIs, calibration, per-source breakdown, HTML report",
        description="Evaluate a checkpoint on a built dataset's split (--data) or, for a classifier, on "
        "raw images named in a COVIDx label file (--labels FILE --images DIR).",
    )
    p.set_defaults(func=run)
    if flags and (cls := config_class(p, "evaluate", "EvalConfig")):  # None without the [torch] extra
        add_config_flags(p, cls)


def run(args) -> int:
    from ..evaluate import EvalConfig, evaluate_checkpoint

    cfg = config_from_args(EvalConfig, args)
    m = evaluate_checkpoint(cfg)
    for f in m["failed"][:20]:
        print(f"covidnet: warning: {f['item']}: {f['error']}", file=sys.stderr)
    print_evaluation(m)
    print(
        f"{m['processed']} images evaluated, {m['failed_count']} failed"
        + (f"; JSON: {cfg.json}" if cfg.json else "")
        + (f"; report: {Path(cfg.report) / 'index.html'}" if cfg.report else "")
    )
    return 0
