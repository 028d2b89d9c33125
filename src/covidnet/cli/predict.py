"""``covidnet predict``: label, probabilities, triage and heat maps for raw images (not a diagnosis)."""

from __future__ import annotations

import json
import sys

from ..errors import CovidnetError, UsageError
from .common import checkpoint_task


def register(sub, flags: bool = True) -> None:
    p = sub.add_parser("predict", help="label, probabilities, triage and heat maps for raw images",
                       description="Predict raw images (files or folders, walked recursively): label, every class's "
                                   "probability, a triage decision, and with --cam a Grad-CAM heat map. Research "
                                   "tool, not a diagnosis.")
    p.set_defaults(func=run)
    if not flags:
        return
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR")
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", help="a PyTorch checkpoint (train's best.pt)")
    model.add_argument("--onnx", metavar="MODEL", help="a model written by `covidnet export` (ONNX Runtime; PyTorch "
                                                       "not needed)")
    p.add_argument("--json", action="store_true", help="one JSON object per image, one per line")
    p.add_argument("--cam", metavar="OUT_DIR", help="write a heat-map overlay PNG per image to OUT_DIR")
    p.add_argument("--cam-method", default="gradcam", help="gradcam or gradcam++")
    p.add_argument("--threshold", metavar="CLASS=P", help="flag an image when P(CLASS) >= P, e.g. COVID-19=0.2 "
                                                          "(default: the checkpoint's operating point, if calibrated)")
    p.add_argument("--operating-point", metavar="sensitivity=0.95", help="use the operating point stored by "
                                                                         "`covidnet calibrate` for this target")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args) -> int:
    # The one place that picks the prediction by the checkpoint's task: it goes once predict_paths takes
    # every task (the checkpoint is read twice until then). An ONNX model is always a classifier.
    if args.checkpoint and checkpoint_task(args.checkpoint) != "classification":
        return _run_task(args)
    return _run_classification(args)


def _run_classification(args) -> int:
    from ..predict import predict_paths

    ok = failed = 0
    results = predict_paths(args.checkpoint, args.inputs, args.batch_size, args.device, args.threshold, args.cam,
                            args.cam_method, args.operating_point, onnx=args.onnx)
    if not args.quiet and sys.stderr.isatty():
        from tqdm import tqdm

        results = tqdm(results, unit="img", file=sys.stderr, leave=False)
    for r in results:
        if r["status"] == "ok":
            ok += 1
        else:
            failed += 1
        if args.json:
            print(json.dumps(r), flush=True)
        elif r["status"] == "ok":
            probs = " ".join(f"{c} {p:.3f}" for c, p in r["probabilities"].items())
            tri = ""
            if "triage" in r:
                t = r["triage"]
                tri = (f"  triage: {'FLAG' if t['flag'] else 'no flag'} ({t['class']} {t['probability']:.3f} "
                       f"vs {t['threshold']:.3f})")
            print(f"{r['path']}: {r['label']}  [{probs}]{tri}" + (f"  cam: {r['cam']}" if "cam" in r else ""),
                  flush=True)
        else:
            print(f"{r['path']}: FAILED: {r['error']}", flush=True)
    print(f"{ok} images processed, {failed} failed", file=sys.stderr)
    if ok == 0:
        raise CovidnetError("no image could be processed" if failed else "no images found in the given paths")
    return 0


def _run_task(args) -> int:
    """A severity or risk checkpoint (covidnet.severity)."""
    from ..severity import predict_task_paths

    if args.threshold or args.operating_point:
        raise UsageError(f"{args.checkpoint}: --threshold and --operating-point are for classification checkpoints")
    ok = failed = 0
    for r in predict_task_paths(args.checkpoint, args.inputs, args.batch_size, args.device, args.cam, args.cam_method):
        ok, failed = ok + (r["status"] == "ok"), failed + (r["status"] != "ok")
        if args.json:
            print(json.dumps(r), flush=True)
        elif r["status"] != "ok":
            print(f"{r['path']}: FAILED: {r['error']}", flush=True)
        elif r["task"] == "severity":
            top = r["scale"][1]
            cams = f"  cam: {', '.join(r['cam'].values())}" if "cam" in r else ""
            print(f"{r['path']}: geographic extent {r['scores']['geographic']:.1f}/{top:g}  opacity extent "
                  f"{r['scores']['opacity']:.1f}/{top:g}{cams}", flush=True)
        else:
            probs = " ".join(f"{c} {p:.3f}" for c, p in r["probabilities"].items())
            print(f"{r['path']}: days since onset {r['bin']}  [{probs}]" + (f"  cam: {r['cam']}" if "cam" in r else ""),
                  flush=True)
    print(f"{ok} images processed, {failed} failed (research tool: not a clinical assessment)", file=sys.stderr)
    if ok == 0:
        raise CovidnetError("no image could be processed" if failed else "no images found in the given paths")
    return 0
