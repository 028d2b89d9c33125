"""Preprocessing throughput: `covidnet data build` against the straightforward loop a user would write
(PIL open -> top 8 % crop -> central square crop -> resize to 480 -> write PNG, one core), on the same
images, in one run. Target (issue 3): the build reaches at least 5x the loop's images/s on 2 cores.

    .venv/bin/python benchmarks/build_throughput.py [--data ../shared/data/sources] [--out FILE.json]

The build's figure is end to end: metadata parsing, decoding, hashing, preprocessing, duplicate
search, splitting and writing the store; the loop's is decoding, cropping, resizing and PNG writing.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

from PIL import Image

from covidnet.data.build import BuildConfig, SourceSpec, build_dataset

ROOT = Path(__file__).resolve().parents[1]


def naive_loop(paths: list[Path], out_dir: Path, size: int = 480) -> float:
    t0 = time.perf_counter()
    for n, p in enumerate(paths):
        im = Image.open(p).convert("L")
        w, h = im.size
        im = im.crop((0, int(0.08 * h), w, h))
        w, h = im.size
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        im = im.crop((left, top, left + s, top + s)).resize((size, size), Image.Resampling.BILINEAR)
        im.save(out_dir / f"{n}.png")
    return len(paths) / (time.perf_counter() - t0)


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def shared_sources(data: Path) -> list[SourceSpec]:
    """The four shared sources under ``data`` (those present), each read by its own reader."""
    if not data.is_dir():
        raise SystemExit(f"{data}: not found (the real data lives at ../shared/data on developers' machines)")
    return [SourceSpec(r, data / r, r) for r in ("cohen", "figure1", "nih", "kermany") if (data / r).is_dir()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "sources")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "build_throughput.json")
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    args = ap.parse_args()
    sources = shared_sources(args.data)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cfg = BuildConfig(
            sources=sources, out=tmp / "built", paediatric="include", workers=args.workers, progress=False
        )
        t0 = time.perf_counter()
        report = build_dataset(cfg)
        build_s = time.perf_counter() - t0
        with open(cfg.out / "records.csv") as f:
            paths = [Path(r["path"]) for r in csv.DictReader(f)]
        shutil.rmtree(cfg.out)
        (tmp / "png").mkdir()
        loop_ips = naive_loop(paths, tmp / "png")

    result = {
        "benchmark": "build_throughput",
        "date": time.strftime("%Y-%m-%d"),
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version()},
        "images": len(paths),
        "naive_loop_images_per_s_1_core": round(loop_ips, 1),
        "build_images_per_s_image_stage": report["images_per_s"],
        "build_images_per_s_end_to_end": round(len(paths) / build_s, 1),
        "build_seconds": round(build_s, 2),
        "workers": args.workers,
        "speedup_end_to_end": round(len(paths) / build_s / loop_ips, 2),
        "target_speedup": 5.0,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
