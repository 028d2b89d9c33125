"""``covidnet demo``: the whole chain on phantom data (or --data): build, train, evaluate, report."""

from __future__ import annotations

from .common import print_evaluation
from .flags import add_config_flags, config_from_args


def register(sub, flags: bool = True) -> None:
    p = sub.add_parser(
        "demo",
        help="the whole chain on phantom data (or --data): build, train, evaluate, report",
        description="Generate phantom radiographs (or read --data), build a dataset, train a COVID-Net "
        "on the CPU for a short schedule, evaluate it with an HTML report.",
    )
    p.set_defaults(func=run)
    if not flags:
        return
    from ..demo import DemoConfig

    add_config_flags(p, DemoConfig)


def run(args) -> int:
    from ..demo import DemoConfig, run_demo

    result = run_demo(config_from_args(DemoConfig, args))
    print()
    print_evaluation(result["metrics"])
    print(f"report: {result['report']}")
    if "severity" in result:
        sev = result["severity"]
        print("\nseverity against the phantoms' true extent:")
        print_evaluation(sev)
        print(f"severity report: {result['severity_report']}")
    return 0
