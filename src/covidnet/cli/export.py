"""``covidnet export``: a checkpoint as an ONNX model (fp32, or int8 calibrated on a built dataset)."""

from __future__ import annotations

import json
from pathlib import Path


def register(sub, flags: bool = True) -> None:
    p = sub.add_parser("export", help="write a checkpoint as an ONNX model (fp32 or int8) for ONNX Runtime",
                       description="Export a checkpoint to ONNX with a dynamic batch dimension and its preprocessing "
                                   "contract in the metadata; check it against PyTorch (fails above 1e-4 for fp32); "
                                   "with --int8, quantise statically on a built dataset's training images and report "
                                   "the validation accuracy change.")
    p.set_defaults(func=run)
    if not flags:
        return
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True, metavar="MODEL.onnx")
    p.add_argument("--format", default="onnx", choices=("onnx",))
    p.add_argument("--int8", action="store_true", help="post-training int8 quantisation (needs --data); the fp32 "
                                                       "model is kept as MODEL.fp32.onnx")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    p.add_argument("--data", metavar="DIR", help="the built dataset: parity on its validation images, int8 "
                                                 "calibration on its training images (default parity: phantoms)")
    p.add_argument("--calibration-images", type=int, default=64, metavar="N")
    p.add_argument("--json", metavar="OUT", help="write what was checked as JSON")
    p.add_argument("--quiet", action="store_true")


def run(args) -> int:
    from ..export import ExportConfig, export_model

    r = export_model(ExportConfig(args.checkpoint, args.out, args.format, args.int8, args.opset, args.data,
                                  args.calibration_images, args.quiet))
    f = r["fp32"]
    print(f"parity with PyTorch on {r['parity_inputs']}: max |Δp| {f['max_abs_prob_diff']:.2e} "
          f"(fp32, tolerance {f['tolerance']:g})")
    if "int8" in r:
        q = r["int8"]
        line = (f"int8 (calibrated on {q['calibration_images']} training images): max |Δp| vs PyTorch "
                f"{q['max_abs_prob_diff']:.3f}")
        if "val_accuracy_int8" in q:
            line += (f"; validation accuracy {q['val_accuracy_fp32']:.3f} (fp32) -> {q['val_accuracy_int8']:.3f} "
                     f"(int8), change {100 * q['val_accuracy_change']:+.1f} points on {q['val_images']} images")
        print(line)
        print(f"fp32 model kept at {r['fp32_path']}")
    print(f"wrote {r['path']} ({r['bytes'] / 1e6:.1f} MB)")
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2) + "\n")
    return 0
