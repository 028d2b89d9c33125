"""``covidnet predict``: label, probabilities, triage and heat maps for raw images (not a diagnosis)."""

from __future__ import annotations

import json
import sys

from ..errors import CovidnetError
from .flags import add_config_flags, config_from_args


def register(sub, flags: bool = True) -> None:
    p = sub.add_parser(
        "predict",
        help="label, probabilities, triage and heat maps for raw images",
        description="Predict raw images (files or folders, walked recursively): label, every class's "
        "probability, a triage decision, and with --cam a Grad-CAM heat map. Research "
        "tool, not a diagnosis.",
    )
    p.set_defaults(func=run)
    if flags:
        from ..predict import PredictConfig  # torch-free: predict --onnx runs without PyTorch

        add_config_flags(p, PredictConfig, one_of=("checkpoint", "onnx"))


def run(args) -> int:
    from ..predict import PredictConfig, predict_paths
    from ..tasks import result_line

    cfg = config_from_args(PredictConfig, args)
    ok = failed = 0
    results = predict_paths(cfg)
    if cfg.progress and sys.stderr.isatty():
        from tqdm import tqdm

        results = tqdm(results, unit="img", file=sys.stderr, leave=False)
    for r in results:
        ok, failed = ok + (r["status"] == "ok"), failed + (r["status"] != "ok")
        if cfg.json:
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
