"""``covidnet audit``: does the model see the disease or the hospital? Shortcut tests with verdicts."""

from __future__ import annotations

from pathlib import Path

from .common import table
from .flags import add_config_flags, config_class, config_from_args


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
    if flags and (cls := config_class(p, "audit", "AuditConfig")):  # None without the [torch] extra
        add_config_flags(p, cls)


def run(args) -> int:
    from ..audit import AuditConfig, run_audit

    cfg = config_from_args(AuditConfig, args)
    a = run_audit(cfg)
    print(
        table(
            ["test", "verdict", "what it means"],
            [
                [s["test"], s["verdict"].upper() if s["verdict"] == "fail" else s["verdict"], s["reading"]]
                for s in a["summary"]
            ],
        )
    )
    if cfg.report:
        print(f"report: {Path(cfg.report) / 'index.html'}")
    return 0
