"""``covidnet predict``: label, probabilities, triage and heat maps for raw images (not a diagnosis)."""

from __future__ import annotations

import json
import sys

from ..errors import CovidnetError


def register(sub, flags: bool = True) -> None:
    p = sub.add_parser(
        "predict",
        help="label, probabilities, triage and heat maps for raw images",
        description="Predict raw images (files or folders, walked recursively): label, every class's "
        "probability, a triage decision, and with --cam a Grad-CAM heat map. Research "
        "tool, not a diagnosis.",
    )
    p.set_defaults(func=run)
    if not flags:
        return
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR")
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", help="a PyTorch checkpoint (train's best.pt)")
    model.add_argument(
        "--onnx", metavar="MODEL", help="a model written by `covidnet export` (ONNX Runtime; PyTorch not needed)"
    )
    p.add_argument("--json", action="store_true", help="one JSON object per image, one per line")
    p.add_argument("--cam", metavar="OUT_DIR", help="write a heat-map overlay PNG per image to OUT_DIR")
    p.add_argument("--cam-method", default="gradcam", help="gradcam or gradcam++")
    p.add_argument(
        "--threshold",
        metavar="CLASS=P",
        help="flag an image when P(CLASS) >= P, e.g. COVID-19=0.2 "
        "(default: the checkpoint's operating point, if calibrated)",
    )
    p.add_argument(
        "--operating-point",
        metavar="sensitivity=0.95",
        help="use the operating point stored by `covidnet calibrate` for this target",
    )
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args) -> int:
    from ..predict import predict_paths
    from ..tasks import result_line

    ok = failed = 0
    results = predict_paths(
        args.checkpoint,
        args.inputs,
        args.batch_size,
        args.device,
        args.threshold,
        args.cam,
        args.cam_method,
        args.operating_point,
        onnx=args.onnx,
    )
    if not args.quiet and sys.stderr.isatty():
        from tqdm import tqdm

        results = tqdm(results, unit="img", file=sys.stderr, leave=False)
    for r in results:
        ok, failed = ok + (r["status"] == "ok"), failed + (r["status"] != "ok")
        if args.json:
            print(json.dumps(r), flush=True)
        elif r["status"] == "ok":
            cams = r.get("cam")
            cams = ", ".join(cams.values()) if isinstance(cams, dict) else cams
            print(f"{r['path']}: {result_line(r)}" + (f"  cam: {cams}" if cams else ""), flush=True)
        else:
            print(f"{r['path']}: FAILED: {r['error']}", flush=True)
    print(f"{ok} images processed, {failed} failed (research tool: not a diagnosis)", file=sys.stderr)
    if ok == 0:
        raise CovidnetError("no image could be processed" if failed else "no images found in the given paths")
    return 0
