"""``covidnet serve``: the HTTP triage service and its web page (research tool, not a diagnosis)."""

from __future__ import annotations

import os


def register(sub, flags: bool = True) -> None:
    p = sub.add_parser("serve", help="HTTP triage service with a web page (research tool, not a diagnosis)",
                       description="Serve a checkpoint or an exported ONNX model over HTTP: POST /v1/predict (an "
                                   "image or DICOM; ?cam=1 adds a heat map), GET /v1/model, GET /healthz, /docs, and "
                                   "a web page at /. Uploads stay in memory; DICOM header fields are never echoed or "
                                   "logged.")
    p.set_defaults(func=run)
    if not flags:
        return
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", help="a PyTorch checkpoint (heat maps available)")
    model.add_argument("--onnx", metavar="MODEL", help="a model written by `covidnet export` (no PyTorch needed)")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda")
    p.add_argument("--token", help="require 'Authorization: Bearer TOKEN' on /v1/* (or set COVIDNET_TOKEN)")
    p.add_argument("--max-upload-mb", type=float, default=32.0, help="larger request bodies get 413 (default 32)")
    p.add_argument("--max-pixels", type=int, default=60_000_000, help="larger images get 413 before decoding "
                                                                       "(default 60 million)")
    p.add_argument("--max-batch", type=int, default=None, help="dynamic batching: up to this many waiting requests "
                                                               "share a forward pass; 1 turns it off (default: 16 on "
                                                               "a GPU, 1 on a CPU, where batches are slower per image)")
    p.add_argument("--batch-wait-ms", type=float, default=2.0, help="how long a batch waits for more requests")
    p.add_argument("--queue-size", type=int, default=64, help="requests in flight before 503 (default 64)")
    p.add_argument("--timeout-s", type=float, default=60.0, help="per-request limit, 504 past it (default 60)")
    p.add_argument("--threshold", metavar="CLASS=P", help="triage rule, as for predict")
    p.add_argument("--operating-point", metavar="sensitivity=0.95",
                   help="triage by the checkpoint's stored operating point")
    p.add_argument("--cors-origin", action="append", metavar="ORIGIN", help="allow this browser origin (repeatable; "
                                                                            "CORS is off by default)")
    p.add_argument("--keep-uploads", metavar="DIR", help="write each upload to DIR, named by request id "
                                                         "(default: uploads are never written to disk)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads of a forward pass (default: all cores; "
                                                             "fewer leaves cores to decoding uploads)")


def run(args) -> int:
    from ..serve import ServeConfig, serve

    token = args.token or os.environ.get("COVIDNET_TOKEN") or None
    serve(ServeConfig(args.checkpoint, args.onnx, args.host, args.port, args.device, token, args.max_upload_mb,
                      args.max_pixels, args.max_batch, args.batch_wait_ms, args.queue_size, args.timeout_s,
                      args.threshold, args.operating_point, args.cors_origin or [], args.keep_uploads,
                      args.threads))
    return 0
