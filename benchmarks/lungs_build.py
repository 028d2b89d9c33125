"""`covidnet data build --lungs` throughput: the same build of the shared sources without a segmenter, with
the segmenter's `covidnet export` on ONNX Runtime, and with the checkpoint in eager PyTorch, side by side in
one run. Target (issue 13): with --lungs, at least one third of the images/s of the build without it.

    .venv/bin/python benchmarks/lungs_build.py --lungs RUN/best.pt [--data ../shared/data/sources] [--out FILE.json]

Each figure is end to end (metadata, decoding, preprocessing, duplicate search, splitting, writing the
store, and for the two --lungs builds segmenting every image and writing masks.npy). The build without a
segmenter runs once first to warm the page cache, unmeasured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from build_throughput import cpu_name, shared_sources

from covidnet.data.build import BuildConfig, build_dataset
from covidnet.data.build.lungs import segmenter_threads
from covidnet.export import ExportConfig, export_model
from covidnet.files import file_id
from covidnet.runtime import load

ROOT = Path(__file__).resolve().parents[1]


def timed_build(sources, out: Path, size: int, workers: int, lungs: Path | None) -> float:
    cfg = BuildConfig(sources=sources, out=out, size=size, paediatric="include", workers=workers, progress=False,
                      lungs=lungs)  # fmt: skip
    t0 = time.perf_counter()  # opening the segmenter is part of the build, as in `covidnet data build --lungs`
    build_dataset(cfg, segmenter=load(lungs, threads=segmenter_threads(cfg.processes)) if lungs else None)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lungs", type=Path, required=True, help="a `covidnet lungs train` checkpoint (best.pt)")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "sources")
    ap.add_argument("--size", type=int, default=480)
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "lungs_build.json")
    args = ap.parse_args()
    sources = shared_sources(args.data)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        onnx = tmp / "lungs.onnx"
        export_model(ExportConfig(checkpoint=str(args.lungs), out=str(onnx), quiet=True))
        timed_build(sources, tmp / "warm", args.size, args.workers, None)
        runs = {}
        for name, lungs in (("without", None), ("onnx", onnx), ("torch", args.lungs)):
            seconds = timed_build(sources, tmp / name, args.size, args.workers, lungs)
            n = sum(1 for _ in open(tmp / name / "records.csv")) - 1
            runs[name] = {"seconds": round(seconds, 2), "images": n, "images_per_s": round(n / seconds, 1)}
    base = runs["without"]["images_per_s"]
    result = {
        "benchmark": "lungs_build",
        "date": time.strftime("%Y-%m-%d"),
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version()},
        "segmenter": file_id(args.lungs, "lungs"),
        "size": args.size,
        "workers": args.workers,
        "builds": runs,
        "ratio_onnx": round(runs["onnx"]["images_per_s"] / base, 3),
        "ratio_torch": round(runs["torch"]["images_per_s"] / base, 3),
        "target_ratio": round(1 / 3, 3),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
