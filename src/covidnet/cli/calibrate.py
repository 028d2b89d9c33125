"""``covidnet calibrate``: temperature scaling and an operating point, fitted on validation data."""

from __future__ import annotations

from ..errors import UsageError


def register(sub, flags: bool = True) -> None:
    p = sub.add_parser(
        "calibrate",
        help="fit a temperature and/or an operating point on validation data",
        description="Fit temperature scaling and/or choose an operating point on the validation split "
        "of a built dataset, and store them in the checkpoint.",
    )
    p.set_defaults(func=run)
    if not flags:
        return
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True, help="the dataset folder; its val split is used, never test")
    p.add_argument("--temperature", action="store_true", help="fit temperature scaling")
    p.add_argument("--operating-point", metavar="sensitivity=0.95", help="choose the COVID-19 threshold meeting this")
    p.add_argument("--device", default="auto")


def run(args) -> int:
    from ..evaluate import calibrate_checkpoint

    if not args.temperature and not args.operating_point:
        raise UsageError("give --temperature and/or --operating-point sensitivity=0.95")
    out = calibrate_checkpoint(args.checkpoint, args.data, args.temperature, args.operating_point, args.device)
    if "temperature" in out:
        print(f"temperature {out['temperature']:.3f}: validation ECE {out['ece_before']:.3f} -> {out['ece_after']:.3f}")
    if out.get("operating_point"):
        op = out["operating_point"]
        print(
            f"operating point {op['target']}: {op['class']} threshold {op['threshold']:.4f} "
            f"(validation sensitivity {op['sensitivity']:.3f}, specificity {op['specificity']:.3f})"
        )
    print(f"stored in {args.checkpoint}")
    return 0
