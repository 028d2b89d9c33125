"""``covidnet predict``: label, probabilities, triage and heat maps for raw images (not a diagnosis)."""

from __future__ import annotations

from .common import print_results
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

    def line(r: dict) -> str:
        cams = r.get("cam")
        cams = ", ".join(cams.values()) if isinstance(cams, dict) else cams
        return result_line(r) + (f"  cam: {cams}" if cams else "")

    return print_results(predict_paths(cfg), cfg.json, cfg.progress, line, "processed")
