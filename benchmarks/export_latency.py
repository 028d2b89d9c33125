"""Batch-1 CPU latency of covidnet-cxr3b at 480 x 480: PyTorch eager against the same checkpoint exported
by `covidnet export` and run on ONNX Runtime in fp32 and int8, side by side in one process. Targets
(issue 7): ONNX Runtime fp32 <= 0.7 x eager, int8 <= 0.5 x eager, int8 accuracy within 1 point of fp32.

    .venv/bin/python benchmarks/export_latency.py [--accuracy-checkpoint CKPT --accuracy-data DIR] [--out FILE.json]

Latency: a 480-px checkpoint trained here for one epoch on phantoms (latency does not depend on what the
weights learnt; calibration images come from that dataset), timed image by image through each runtime's
own call (eager: the checkpoint's memory format, as `covidnet predict` runs it, and plain NCHW), after
warm-up, median of --runs. All cores of the machine (torch and ONNX Runtime defaults).

Accuracy: a checkpoint trained on real data (--accuracy-checkpoint, with the dataset it was built from)
is exported in fp32 and int8 by the same code, and its validation and test accuracy is measured in
PyTorch, ONNX Runtime fp32 and int8.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _phantom_model import phantom_checkpoint

from covidnet.data.store import open_store
from covidnet.export import ExportConfig, export_model
from covidnet.runtime import load

ROOT = Path(__file__).resolve().parents[1]


def median_ms(fns: dict, runs: int, warmup: int = 3, block: int = 5) -> dict:
    """Median wall time of each function, in ms. The functions take turns in blocks of ``block`` calls, so
    anything else running on the machine slows them alike; a block's first call is not timed, since ONNX
    Runtime's threads keep spinning for a moment after a run and would be billed to the next runtime."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    while min(len(v) for v in times.values()) < runs:
        for name, fn in fns.items():
            fn()
            for _ in range(block):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    return {f"{k}_ms": 1000 * statistics.median(v) for k, v in times.items()}


def latency(work: Path, runs: int) -> dict:
    ckpt, ds = phantom_checkpoint(work)
    export_model(
        ExportConfig(str(ckpt), str(work / "m.onnx"), int8=True, data=str(ds), calibration_images=32, quiet=True)
    )
    x = np.asarray(open_store(ds).images[:1])
    eager = load(ckpt, "cpu", batch_size=1)
    nchw = load(ckpt, "cpu", batch_size=1)
    nchw.memory_format = torch.contiguous_format
    fp32, int8 = load(work / "m.fp32.onnx", "cpu"), load(work / "m.onnx", "cpu")
    out = median_ms(
        {
            "eager": lambda: eager.logits(x),
            "eager_nchw": lambda: nchw.logits(x),
            "onnx_fp32": lambda: fp32.logits(x),
            "onnx_int8": lambda: int8.logits(x),
        },
        runs,
    )
    out["eager_memory_format"] = eager.meta["memory_format"]
    e = out["eager_ms"]
    out["onnx_fp32_over_eager"] = out["onnx_fp32_ms"] / e
    out["onnx_int8_over_eager"] = out["onnx_int8_ms"] / e
    out["targets_met"] = {
        "onnx_fp32 <= 0.7 eager": out["onnx_fp32_over_eager"] <= 0.7,
        "onnx_int8 <= 0.5 eager": out["onnx_int8_over_eager"] <= 0.5,
    }
    return out


def accuracy(ckpt: str, data: str, work: Path) -> dict:
    report = export_model(ExportConfig(ckpt, str(work / "acc.onnx"), int8=True, data=data, quiet=True))
    store = open_store(data)
    runtimes = {
        "torch": load(ckpt, "cpu", batch_size=32),
        "onnx_fp32": load(work / "acc.fp32.onnx", "cpu"),
        "onnx_int8": load(work / "acc.onnx", "cpu"),
    }
    out = {"checkpoint": ckpt, "data": data, "stored_size": store.size, "export": report["int8"]}
    for split in ("val", "test"):
        rows = store.rows(split)
        x, y = np.asarray(store.images[rows]), store.labels(rows)
        preds = {}
        for name, b in runtimes.items():
            preds[name] = np.concatenate([b.logits(x[k : k + 32]).argmax(1) for k in range(0, len(x), 32)])
            out[f"{split}_accuracy_{name}"] = float((preds[name] == y).mean())
        out[f"{split}_int8_fp32_same_prediction"] = float((preds["onnx_int8"] == preds["onnx_fp32"]).mean())
        out[f"{split}_images"] = int(len(rows))
        out[f"{split}_int8_minus_fp32_points"] = 100 * (
            out[f"{split}_accuracy_onnx_int8"] - out[f"{split}_accuracy_onnx_fp32"]
        )
    out["target_met"] = {"int8 within 1 point of fp32 (test)": abs(out["test_int8_minus_fp32_points"]) <= 1.0}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--accuracy-checkpoint")
    ap.add_argument("--accuracy-data")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "export_latency.json"))
    args = ap.parse_args()
    result = {
        "machine": {
            "cpu": _cpu(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "onnxruntime": __import__("onnxruntime").__version__,
        },
        "model": "covidnet-cxr3b",
        "size": 480,
        "batch": 1,
    }
    with tempfile.TemporaryDirectory() as tmp:
        result["latency"] = latency(Path(tmp), args.runs)
        if args.accuracy_checkpoint:
            result["accuracy"] = accuracy(args.accuracy_checkpoint, args.accuracy_data, Path(tmp))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
