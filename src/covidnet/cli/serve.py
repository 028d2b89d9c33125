"""``covidnet serve``: the HTTP triage service and its web page (research tool, not a diagnosis)."""

from __future__ import annotations

import os

from .flags import add_config_flags, config_class, config_from_args


def register(sub, flags: bool = True) -> None:
    p = sub.add_parser(
        "serve",
        help="HTTP triage service with a web page (research tool, not a diagnosis)",
        description="Serve a checkpoint or an exported ONNX model over HTTP: POST /v1/predict (an "
        "image or DICOM; ?cam=1 adds a heat map), GET /v1/model, GET /healthz, /docs, and "
        "a web page at /. Uploads stay in memory; DICOM header fields are never echoed or "
        "logged.",
    )
    p.set_defaults(func=run)
    if not flags:
        return
    if cls := config_class(p, "serve", "ServeConfig"):  # None without the [serve] extra
        add_config_flags(p, cls, one_of=("checkpoint", "onnx"))


def run(args) -> int:
    from ..serve import ServeConfig, serve

    token = args.token or os.environ.get("COVIDNET_TOKEN") or None
    serve(config_from_args(ServeConfig, args, token=token))
    return 0
