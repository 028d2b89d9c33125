"""``covidnet demo``: the whole chain on phantom data (or --data): build, train, evaluate, report."""

from __future__ import annotations

from .common import print_metrics, print_severity


def register(sub, flags: bool = True) -> None:
    p = sub.add_parser("demo", help="the whole chain on phantom data (or --data): build, train, evaluate, report",
                       description="Generate phantom radiographs (or read --data), build a dataset, train a COVID-Net "
                                   "on the CPU for a short schedule, evaluate it with an HTML report.")
    p.set_defaults(func=run)
    if not flags:
        return
    p.add_argument("--out", default="demo", help="folder for everything (default ./demo)")
    p.add_argument("--data", action="append", metavar="[READER=]PATH",
                   help="real source folder(s) instead of phantoms (READER defaults to cohen)")
    p.add_argument("--n", type=int, default=300, help="phantom images (default 300)")
    p.add_argument("--size", type=int, default=96, help="stored image side (default 96)")
    p.add_argument("--epochs", type=int, default=10, help="training epochs (default 10)")
    p.add_argument("--severity-epochs", type=int, default=6,
                   help="phantoms: epochs fine-tuning the classifier into a severity head "
                        "(default 6; 0 skips the step)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an earlier demo in --out")
    p.add_argument("--quiet", action="store_true")


def run(args) -> int:
    from ..demo import DemoConfig, run_demo

    result = run_demo(DemoConfig(out=args.out, data=args.data, n=args.n, size=args.size, epochs=args.epochs,
                                 severity_epochs=args.severity_epochs, seed=args.seed, overwrite=args.overwrite,
                                 progress=not args.quiet))
    print()
    print_metrics(result["metrics"])
    print(f"report: {result['report']}")
    if "severity" in result:
        sev = result["severity"]
        print(f"\nseverity against the phantoms' true extent: {sev['n']} test images of {sev['n_patients']} patients")
        print_severity(sev)
        print(f"severity report: {result['severity_report']}")
    return 0
