"""``covidnet calibrate``: temperature scaling and an operating point, fitted on validation data."""

from __future__ import annotations

from .flags import add_config_flags, config_class, config_from_args


def register(sub, flags: bool = True) -> None:
    p = sub.add_parser(
        "calibrate",
        help="fit a temperature and/or an operating point on validation data",
        description="Fit temperature scaling and/or choose an operating point on the validation split "
        "of a built dataset, and store them in the checkpoint.",
    )
    p.set_defaults(func=run)
    if flags and (cls := config_class(p, "evaluate", "CalibrateConfig")):  # None without the [torch] extra
        add_config_flags(p, cls)


def run(args) -> int:
    from ..evaluate import CalibrateConfig, calibrate_checkpoint

    cfg = config_from_args(CalibrateConfig, args)
    out = calibrate_checkpoint(cfg)
    if "temperature" in out:
        print(f"temperature {out['temperature']:.3f}: validation ECE {out['ece_before']:.3f} -> {out['ece_after']:.3f}")
    if out.get("operating_point"):
        op = out["operating_point"]
        print(
            f"operating point {op['target']}: {op['class']} threshold {op['threshold']:.4f} "
            f"(validation sensitivity {op['sensitivity']:.3f}, specificity {op['specificity']:.3f})"
        )
    print(f"stored in {cfg.checkpoint}")
    return 0
