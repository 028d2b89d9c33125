"""COVIDx at its real size on one machine: build, training and evaluation of phantom stores of 1,000,
10,000 and 84,818 images (COVIDx CXR-4's count) at 480 px, each measured as a separate process for wall
time and peak resident memory (the process and its workers, sampled every 0.1 s from /proc).

    .venv/bin/python benchmarks/scale.py [--sizes 1000,10000,84818] [--from-files-max 10000] [--work DIR]

* **build** (sizes up to ``--from-files-max``): ``covidnet data build`` from phantom files on disk, 256 px
  PNGs drawn first with ``covidnet data synth`` (not timed; stored at 480 px like every build). Drawing
  84,818 phantoms would take about 2 hours on 2 cores, so the largest store is written directly: its rows
  are the 10,000-image store's pixels, repeated, under new names and patients, with the build's index,
  contract and config (the store format is the build's; only the images repeat).
* **train**: ``covidnet train`` on the store, streamed (``--host-memory-gb 0.001``, so every size takes
  the streamed path), covidnet-cxr3b at a 64 px model input (the stored 480 px images are read and
  resized on every step, which is the input path under test), ``--max-steps``; images/s from run.json.
* **eval**: ``evaluate_checkpoint`` (what ``covidnet eval`` runs) on the test split (1,000 images at every size
  but the smallest, 100 there), in a process of its own, timed inside it (model load and bootstrap included,
  the interpreter's start not).

Targets (issue 15): training peak RSS <= 4 GB at 84,818 images; build peak RSS within 1.5x between 1k and
10k images; time per image within +-25 % across sizes. The big store is deleted after the run.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
EXE = Path(sys.executable).parent / "covidnet"
STORED = 480
FILE_PX = 256  # side of the phantom files the build reads (at 512 px they take 4x as long to draw)


def tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and all its descendants."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                total += next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except (OSError, StopIteration):
            continue
    return total


def measured(cmd: list[str]) -> dict:
    """Run ``cmd``; its wall time and the peak resident memory of its process tree."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = [0]

    def sample():
        while proc.poll() is None:
            peak[0] = max(peak[0], tree_rss(proc.pid))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    sampler.join()
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err[-2000:]}")
    return {"seconds": round(time.perf_counter() - t0, 2), "peak_rss_gb": round(peak[0] / 2**30, 3), "stdout": out}


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def build_from_files(n: int, work: Path) -> tuple[Path, dict]:
    phantoms = work / f"phantoms-{n}"
    if not (phantoms / "metadata.csv").is_file():
        print(f"drawing {n} phantom radiographs (not timed) ...", file=sys.stderr, flush=True)
        subprocess.run(
            [str(EXE), "data", "synth", "--out", str(phantoms), "--n", str(n), "--size", str(FILE_PX), "--quiet"],
            check=True,
        )
    ds = work / f"store-{n}"
    shutil.rmtree(ds, ignore_errors=True)
    test = min(0.1, 1000 / n)
    m = measured(
        [
            str(EXE),
            "data",
            "build",
            "--source",
            f"cohen={phantoms}",
            "--out",
            str(ds),
            "--size",
            str(STORED),
            "--val-fraction",
            str(min(0.05, 500 / n)),
            "--test-fraction",
            str(test),
            "--quiet",
            "--json",
        ]
    )
    report = json.loads(m.pop("stdout"))
    return ds, {
        **m,
        "images": report["n_images"],
        "seconds_in_process": report["seconds"],
        "ms_per_image": round(1000 * report["seconds"] / report["n_images"], 2),
        "image_stage_images_per_s": report["images_per_s"],
    }


def write_store_directly(n: int, like: Path, out: Path) -> Path:
    """A store of ``n`` rows in the build's format, its pixels those of ``like`` repeated (new names,
    patients); 500 validation and 1,000 test images."""
    from covidnet.data.store import INDEX_COLUMNS, open_store

    src = open_store(like)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    header = {"descr": "|u1", "fortran_order": False, "shape": (n, STORED, STORED)}
    with open(out / "images.npy", "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        for start in range(0, n, 256):
            rows = np.arange(start, min(n, start + 256)) % len(src.images)
            f.write(src.read(rows).tobytes())
    split = np.array(["train"] * n, dtype=object)
    split[n - 1500 : n - 1000], split[n - 1000 :] = "val", "test"
    with open(out / "index.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(INDEX_COLUMNS))
        w.writeheader()
        for i in range(n):
            r = src.index[i % len(src.index)]
            w.writerow(
                {
                    **{k: r.get(k, "") for k in INDEX_COLUMNS},
                    "row": i,
                    "patient_id": f"bench{i // 2}",
                    "filename": f"bench{i:06d}.png",
                    "split": split[i],
                }
            )
    src.contract.write(out)
    (out / "config.json").write_text(
        json.dumps({"command": "benchmarks/scale.py", "size": STORED, "top_crop": src.contract.top_crop})
    )
    return out


def train_and_eval(ds: Path, work: Path, steps: int) -> tuple[dict, dict]:
    run = work / f"run-{ds.name}"
    shutil.rmtree(run, ignore_errors=True)
    t = measured(
        [
            str(EXE),
            "train",
            "--data",
            str(ds),
            "--out",
            str(run),
            "--size",
            "64",
            "--batch-size",
            "16",
            "--max-steps",
            str(steps),
            "--host-memory-gb",
            "0.001",
            "--precise-bn",
            "0",
            "--device",
            "cpu",
            "--compile",
            "off",
            "--no-progress",
        ]
    )
    t.pop("stdout")
    status = json.loads((run / "run.json").read_text())
    t.update(steps=steps, images_per_s=round(status["images_per_s"], 1))
    # eval in a process of its own (its peak RSS), timed inside it: the images' cost, not the interpreter's start
    code = (
        "import sys, time; from covidnet.evaluate import EvalConfig, evaluate_checkpoint; t = time.perf_counter(); "
        "m = evaluate_checkpoint(EvalConfig(sys.argv[1], data=sys.argv[2], split='test', resamples=100, "
        "device='cpu')); "
        "print(m['processed'], time.perf_counter() - t)"
    )
    e = measured([sys.executable, "-c", code, str(run / "best.pt"), str(ds)])
    n, inner = e.pop("stdout").split()
    e.update(
        images=int(n), seconds_in_process=round(float(inner), 2), ms_per_image=round(1000 * float(inner) / int(n), 2)
    )
    return t, e


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,10000,84818")
    ap.add_argument("--from-files-max", type=int, default=10000)
    ap.add_argument("--steps", type=int, default=60, help="training steps per size")
    ap.add_argument("--work", type=Path, default=ROOT / ".bench-scale", help="scratch folder (git-ignored)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "scale.json")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    sizes = [int(s) for s in args.sizes.split(",")]
    results, biggest_built = {}, None
    for n in sizes:
        entry = {}
        if n <= args.from_files_max:
            ds, entry["build"] = build_from_files(n, args.work)
            biggest_built = ds
        else:
            if biggest_built is None:
                raise SystemExit("a store written directly repeats a built one: give a size <= --from-files-max first")
            t0 = time.perf_counter()
            ds = write_store_directly(n, biggest_built, args.work / f"store-{n}")
            entry["build"] = {"written_directly": True, "seconds": round(time.perf_counter() - t0, 1)}
        entry["store_gb"] = round((ds / "images.npy").stat().st_size / 2**30, 2)
        entry["train"], entry["eval"] = train_and_eval(ds, args.work, args.steps)
        results[str(n)] = entry
        print(json.dumps({n: entry}), file=sys.stderr, flush=True)
        if n > args.from_files_max:
            shutil.rmtree(ds)  # 19.5 GB at 84,818 images
    built = [results[str(n)]["build"] for n in sizes if n <= args.from_files_max]
    out = {
        "benchmark": "scale",
        "date": time.strftime("%Y-%m-%d"),
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version()},
        "stored_px": STORED,
        "results": results,
        "targets": {"train_peak_rss_gb_at_84818": 4.0, "build_rss_ratio_10k_over_1k": 1.5, "per_image_spread": 0.25},
        "build_rss_ratio": round(built[-1]["peak_rss_gb"] / built[0]["peak_rss_gb"], 2) if len(built) > 1 else None,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
