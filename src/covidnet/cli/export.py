"""``covidnet export``: a checkpoint as an ONNX model (fp32, or int8 calibrated on a built dataset)."""

from __future__ import annotations

from .flags import add_config_flags, config_class, config_from_args


def register(sub, flags: bool = True) -> None:
    p = sub.add_parser(
        "export",
        help="write a checkpoint as an ONNX model (fp32 or int8) for ONNX Runtime",
        description="Export a checkpoint to ONNX with a dynamic batch dimension and its preprocessing "
        "contract in the metadata; check it against PyTorch (fails above 1e-4 for fp32); "
        "with --int8, quantise statically on a built dataset's training images and report "
        "the validation accuracy change.",
    )
    p.set_defaults(func=run)
    if not flags:
        return
    if cls := config_class(p, "export", "ExportConfig"):
        add_config_flags(p, cls)
        p.add_argument("--json", metavar="OUT", help="write what was checked as JSON")


def run(args) -> int:
    from ..export import ExportConfig, export_model

    r = export_model(config_from_args(ExportConfig, args))
    f = r["fp32"]
    print(
        f"parity with PyTorch on {r['parity_inputs']}: max |Δp| {f['max_abs_prob_diff']:.2e} "
        f"(fp32, tolerance {f['tolerance']:g})"
    )
    if "int8" in r:
        q = r["int8"]
        line = (
            f"int8 (calibrated on {q['calibration_images']} training images): max |Δp| vs PyTorch "
            f"{q['max_abs_prob_diff']:.3f}"
        )
        if "val_accuracy_int8" in q:
            line += (
                f"; validation accuracy {q['val_accuracy_fp32']:.3f} (fp32) -> {q['val_accuracy_int8']:.3f} "
                f"(int8), change {100 * q['val_accuracy_change']:+.1f} points on {q['val_images']} images"
            )
        print(line)
        print(f"fp32 model kept at {r['fp32_path']}")
    print(f"wrote {r['path']} ({r['bytes'] / 1e6:.1f} MB)")
    if args.json:
        from ..files import write_json

        write_json(args.json, r)
    return 0
