"""`covidnet serve` under load: 16 concurrent clients on loopback for 60 s, posting one chest X-ray again
and again, with dynamic batching on (--max-batch 16) and off (--max-batch 1), in one run. Reports
throughput, client-side p50/p99 latency and failed requests (issue 7: none below the queue limit).

    .venv/bin/python benchmarks/serve_load.py [--runtime torch|onnx] [--device cpu|cuda] [--seconds 60]
        [--clients 16] [--image FILE] [--out FILE.json]

The model is covidnet-cxr3b at 480 x 480 (a one-epoch phantom checkpoint: throughput does not depend on
what the weights learnt; with --runtime onnx, its `covidnet export`). The image defaults to a real
radiograph from ../shared/data when present, else a phantom. The load generator is httpx's async
client, one connection per client, each sending its next request when the last one is answered.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from _phantom_model import phantom_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SHARED_IMAGES = ROOT.parent / "shared" / "data" / "sources" / "cohen" / "images"


async def load(url: str, image: bytes, clients: int, seconds: float) -> dict:
    latencies: list[float] = []
    codes: dict[int, int] = {}
    errors: list[str] = []
    stop = time.perf_counter() + seconds

    async def client():
        async with httpx.AsyncClient(base_url=url, timeout=120) as c:
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                try:
                    r = await c.post("/v1/predict", files={"file": ("xray", image)})
                    codes[r.status_code] = codes.get(r.status_code, 0) + 1
                    if r.status_code == 200:
                        latencies.append(time.perf_counter() - t0)
                except httpx.HTTPError as e:
                    errors.append(type(e).__name__)

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    wall = time.perf_counter() - t0
    ms = sorted(1000 * x for x in latencies)
    return {
        "requests_ok": len(latencies),
        "status_codes": codes,
        "transport_errors": len(errors),
        "wall_s": wall,
        "throughput_rps": len(latencies) / wall,
        "p50_ms": statistics.median(ms) if ms else None,
        "p99_ms": float(np.percentile(ms, 99)) if ms else None,
        "failed": sum(n for code, n in codes.items() if code != 200) + len(errors),
    }


def run_server(model_args: list[str], device: str, max_batch: int, port: int, log: Path) -> subprocess.Popen:
    exe = Path(sys.executable).parent / "covidnet"
    proc = subprocess.Popen(
        [
            str(exe),
            "serve",
            *model_args,
            "--device",
            device,
            "--port",
            str(port),
            "--max-batch",
            str(max_batch),
            "--queue-size",
            "64",
        ],
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
    )
    for _ in range(300):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.3)
        if proc.poll() is not None:
            break
    proc.kill()
    raise SystemExit(f"covidnet serve did not start:\n{log.read_text()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runtime", choices=("torch", "onnx"), default="torch")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--image")
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--threads", type=int, help="the server's --threads (default: all cores)")
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.image:
        image, where = Path(args.image).read_bytes(), args.image
    elif SHARED_IMAGES.is_dir():
        first = sorted(p for p in SHARED_IMAGES.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[0]
        image, where = first.read_bytes(), f"../shared/data/sources/cohen/images/{first.name}"
    else:
        image, where = None, "a phantom"
    result = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "runtime": args.runtime,
        "device": args.device,
        "threads": args.threads,
        "clients": args.clients,
        "seconds": args.seconds,
        "model": "covidnet-cxr3b",
        "size": 480,
        "image": where,
        "runs": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ckpt, ds = phantom_checkpoint(work)
        if image is None:
            image = (sorted((work / "phantoms" / "images").glob("*.png"))[0]).read_bytes()
        model_args = ["--checkpoint", str(ckpt)] + (["--threads", str(args.threads)] if args.threads else [])
        if args.runtime == "onnx":
            from covidnet.export import ExportConfig, export_model

            export_model(ExportConfig(str(ckpt), str(work / "m.onnx"), data=str(ds), quiet=True))
            model_args = ["--onnx", str(work / "m.onnx")] + (["--threads", str(args.threads)] if args.threads else [])
        for name, max_batch in (("batching_on", 16), ("batching_off", 1)):
            proc = run_server(model_args, args.device, max_batch, args.port, work / f"{name}.log")
            try:
                url = f"http://127.0.0.1:{args.port}"
                asyncio.run(load(url, image, args.clients, 3))  # warm-up
                r = asyncio.run(load(url, image, args.clients, args.seconds))
                r["server_batches"] = httpx.get(url + "/healthz").json()["batches"]
                result["runs"][name] = r
                print(name, json.dumps(r), flush=True)
            finally:
                proc.terminate()
                proc.wait(15)
    on, off = result["runs"]["batching_on"], result["runs"]["batching_off"]
    result["batching_speedup"] = on["throughput_rps"] / off["throughput_rps"]
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"serve_load_{args.runtime}_{args.device}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
