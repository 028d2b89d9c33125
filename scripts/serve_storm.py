"""`covidnet serve` under a storm of mutated uploads (issue 28): a real server on loopback, N requests from
concurrent clients, each a mutation of a valid PNG, 16-bit PNG, RGB PNG, JPEG, WebP (lossy and lossless) or
DICOM (8/16-bit, RLE, JPEG 2000, JPEG baseline), sent as a multipart form or a raw body; among them headers
that declare huge dimensions, truncated multipart bodies, bodies cut off before their Content-Length (the
client hangs up), malformed multipart, and bodies over the upload limit. Every DICOM carries a PatientName
and PatientID that are marker strings unique to its request.

It asserts what the issue asks: no 5xx, no response body and no line of the server's log that contains a
marker, the server still answering /healthz at the end, and the growth of its resident memory (VmRSS of its
process) under ``--rss-mb``; and no traceback in its log (the project's rule: tracebacks are for bugs). It
writes a JSON of the figures: requests by kind, status codes by kind, latency percentiles, the server's
resident memory before and after (and its peak, VmHWM).

    .venv/bin/python scripts/serve_storm.py                 # 300 requests, a checkpoint trained here
    .venv/bin/python scripts/serve_storm.py --long          # 5,000
    .venv/bin/python scripts/serve_storm.py --checkpoint run/best.pt --n 1000 --concurrency 16 --out storm.json

The mutations are those of the property tests (tests/properties/mutate.py), drawn from a seeded
``random.Random`` (``--seed``), so a run is repeatable. Exit status 1 when an assertion fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "properties"))  # the property tests' mutations
sys.path.insert(0, str(ROOT / "tests"))  # dicomfiles.py, which they use

import httpx  # noqa: E402
from mutate import apply, declare_size, dicom_with, random_ops, seeds  # noqa: E402

MARK = "STORMMARK"  # every marker starts with it: one search of a body or the log finds any of them
KINDS = (
    "mutated",  # byte mutations of a valid file, multipart
    "raw",  # the same, as the raw body with a declared type
    "dimensions",  # a header declaring huge (or just large) dimensions, maybe mutated further
    "truncated_multipart",  # a multipart body cut at a random point (Content-Length of what is sent)
    "hangup",  # Content-Length says more than is sent, then the client closes the connection
    "bad_multipart",  # a multipart body with its boundary or headers broken
    "oversized",  # a body over --max-upload-mb
    "valid",  # an unmutated file (the control)
)
WEIGHTS = (40, 10, 14, 12, 6, 8, 2, 8)


def train_checkpoint(work: Path) -> Path:
    """A covidnet-cxr3b trained for a few steps on phantoms at 64 px, by the CLI: what the storm serves when
    no --checkpoint is given (the storm tests the service, not the model)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    covidnet = [sys.executable, "-m", "covidnet"]
    steps = [
        ["data", "synth", "--out", str(work / "ph"), "--n", "30", "--size", "128", "--quiet"],
        ["data", "build", "--source", f"cohen={work / 'ph'}", "--out", str(work / "ds"), "--size", "64"]
        + ["--workers", "1", "--quiet"],
        ["train", "--data", str(work / "ds"), "--out", str(work / "run"), "--epochs", "1", "--max-steps", "2"]
        + ["--precise-bn", "0", "--no-progress", "--device", "cpu"],
    ]
    for args in steps:
        subprocess.run([*covidnet, *args], check=True, env=env, stdout=subprocess.DEVNULL)
    return work / "run" / "best.pt"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def status_kb(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def start_server(checkpoint: Path, port: int, log: Path, max_upload_mb: float) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    args = ["serve", "--checkpoint", str(checkpoint), "--port", str(port), "--max-upload-mb", str(max_upload_mb)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "covidnet", *args, "--device", "cpu"],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        env=env,
    )
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"covidnet serve exited: {log.read_text()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    raise SystemExit(f"covidnet serve did not start: {log.read_text()}")


# --- the requests ---------------------------------------------------------------------------------------------

CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp", "dicom": "application/dicom"}


def multipart(data: bytes, filename: str, content_type: str, boundary: str) -> bytes:
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        f"Content-Type: {content_type}\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode()


def plan(rng: random.Random, i: int, valid: dict[str, tuple[str, bytes]], limit: int) -> dict:
    """Request i: its kind, the seed format, and what to send (headers, body; ``declared``: a Content-Length
    larger than the body, for hang-ups)."""
    kind = rng.choices(KINDS, WEIGHTS)[0]
    fmt = rng.choice(sorted(valid))
    name, data = valid[fmt]
    markers = (f"{MARK}N{i:05d}^Storm", f"{MARK}I{i:05d}")
    if fmt.startswith("dicom"):
        data = dicom_with(data, PatientName=markers[0], PatientID=markers[1])
    family = "dicom" if fmt.startswith("dicom") else fmt.split("_")[0].rstrip("16")
    ctype = CONTENT_TYPES[family]
    if kind in ("mutated", "raw"):
        data = apply(data, random_ops(rng))
    elif kind == "dimensions":
        big = rng.choice([(50_000, 50_000), (40_000, 40_000), (65_535, 3), (9_000, 7_000), (2_000, 2_000)])
        data = declare_size(fmt, data, *big)
        if rng.random() < 0.3:
            data = apply(data, random_ops(rng, 2))
    boundary = f"storm{rng.getrandbits(40):x}"
    body = multipart(data, name, ctype, boundary)
    headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
    declared = None
    if kind == "raw":
        body, headers = data, {"content-type": ctype}
    elif kind == "truncated_multipart":
        body = body[: rng.randrange(1, len(body))]
    elif kind == "hangup":
        declared = len(body) + rng.randint(1, 1 << 20)
        body = body[: rng.randrange(0, len(body))]
    elif kind == "bad_multipart":
        how = rng.randrange(4)
        if how == 0:
            headers = {"content-type": "multipart/form-data; boundary=wrong"}
        elif how == 1:
            headers = {"content-type": "multipart/form-data"}
        elif how == 2:
            body = body.replace(b"\r\n\r\n", b"\r\n", 1)
        else:
            body = apply(body, random_ops(rng, 3))
    elif kind == "oversized":
        body = body + rng.randbytes(limit + 1024 - len(body)) if len(body) <= limit else body
    return {"i": i, "kind": kind, "format": fmt, "body": body, "headers": headers, "declared": declared}


async def send(client: httpx.AsyncClient, url: str, port: int, req: dict) -> dict:
    t0 = time.perf_counter()
    if req["declared"] is not None:  # a raw socket: say more than is sent, then hang up
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        head = f"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {req['declared']}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in req["headers"].items()) + "Connection: close\r\n\r\n"
        writer.write(head.encode() + req["body"])
        await writer.drain()
        writer.close()
        await writer.wait_closed()
        return {
            "kind": req["kind"],
            "format": req["format"],
            "status": "hangup",
            "ms": 1000 * (time.perf_counter() - t0),
        }
    try:
        r = await client.post(url + "/v1/predict", content=req["body"], headers=req["headers"])
        status, text = r.status_code, r.text
    except httpx.HTTPError as e:  # the server closed the connection (e.g. after a 413 before reading the body)
        status, text = f"client:{type(e).__name__}", ""
    return {
        "kind": req["kind"],
        "format": req["format"],
        "status": status,
        "ms": 1000 * (time.perf_counter() - t0),
        "leak": MARK in text,
    }


async def storm(url: str, port: int, requests: list[dict], concurrency: int) -> list[dict]:
    queue: asyncio.Queue = asyncio.Queue()
    for req in requests:
        queue.put_nowait(req)
    results: list[dict] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:

        async def worker():
            while not queue.empty():
                results.append(await send(client, url, port, queue.get_nowait()))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


def percentiles(values: list[float]) -> dict:
    if not values:
        return {}
    q = statistics.quantiles(values, n=100, method="inclusive") if len(values) > 1 else [values[0]] * 99
    return {"p50": round(q[49], 1), "p95": round(q[94], 1), "max": round(max(values), 1)}


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", help="a covidnet checkpoint to serve (default: one trained here on phantoms)")
    p.add_argument("--n", type=int, default=300, help="requests (default 300)")
    p.add_argument("--long", action="store_true", help="5,000 requests")
    p.add_argument("--concurrency", type=int, default=8, help="clients at once (default 8)")
    p.add_argument("--seed", type=int, default=0, help="seed of the mutations (default 0)")
    p.add_argument("--max-upload-mb", type=float, default=2.0, help="the server's upload limit (default 2)")
    p.add_argument("--rss-mb", type=float, default=600.0, help="the bound on the server's growth in resident memory")
    p.add_argument("--work", help="folder for the checkpoint and the server's log (default: a temporary one)")
    p.add_argument("--out", help="write the figures here as JSON")
    args = p.parse_args(argv)
    n = 5000 if args.long else args.n
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        checkpoint = Path(args.checkpoint) if args.checkpoint else train_checkpoint(work)
        port, log = free_port(), work / "serve.log"
        limit = int(args.max_upload_mb * 1024 * 1024)
        rng = random.Random(args.seed)
        valid = seeds()
        requests = [plan(rng, i, valid, limit) for i in range(n)]
        server = start_server(checkpoint, port, log, args.max_upload_mb)
        url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(3):  # warm up: the first forward passes allocate what the steady state keeps
                httpx.post(url + "/v1/predict", content=valid["png"][1], headers={"content-type": "image/png"})
            rss_before = status_kb(server.pid, "VmRSS")
            t0 = time.perf_counter()
            results = asyncio.run(storm(url, port, requests, args.concurrency))
            seconds = time.perf_counter() - t0
            time.sleep(1.0)  # the server finishes what hung-up clients left
            health = httpx.get(url + "/healthz", timeout=10)
            alive = server.poll() is None and health.status_code == 200 and health.json()["status"] == "ok"
            rss_after, rss_peak = status_kb(server.pid, "VmRSS"), status_kb(server.pid, "VmHWM")
        finally:
            server.terminate()
            try:
                server.wait(15)
            except subprocess.TimeoutExpired:
                server.kill()
        log_text = log.read_text(errors="replace")
        by_kind: dict[str, Counter] = defaultdict(Counter)
        for r in results:
            by_kind[r["kind"]][str(r["status"])] += 1
        server_errors = [r for r in results if isinstance(r["status"], int) and r["status"] >= 500]
        leaks = [r for r in results if r.get("leak")]
        log_leaks = [line for line in log_text.splitlines() if MARK in line]
        tracebacks = log_text.count("Traceback")
        grown_mb = (rss_after - rss_before) / 1024
        figures = {
            "requests": n,
            "concurrency": args.concurrency,
            "seed": args.seed,
            "seconds": round(seconds, 1),
            "requests_per_s": round(n / seconds, 1),
            "by_kind": {k: dict(sorted(v.items())) for k, v in sorted(by_kind.items())},
            "by_format": dict(sorted(Counter(r["format"] for r in results).items())),
            "status": dict(sorted(Counter(str(r["status"]) for r in results).items())),
            "latency_ms": {
                k: percentiles([r["ms"] for r in results if r["kind"] == k and r["status"] != "hangup"]) for k in KINDS
            },
            "server_errors_5xx": len(server_errors),
            "marker_leaks_in_responses": len(leaks),
            "marker_leaks_in_log": len(log_leaks),
            "tracebacks_in_log": tracebacks,
            "alive_at_end": alive,
            "rss_mb": {
                "before": round(rss_before / 1024, 1),
                "after": round(rss_after / 1024, 1),
                "peak": round(rss_peak / 1024, 1),
                "grown": round(grown_mb, 1),
                "bound_on_growth": args.rss_mb,
            },
            "max_upload_mb": args.max_upload_mb,
            "machine": machine(),
            "command": "scripts/serve_storm.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "date": time.strftime("%Y-%m-%d"),
        }
        failures = [
            (bool(server_errors), f"{len(server_errors)} responses 5xx, e.g. {server_errors[:3]}"),
            (bool(leaks), f"{len(leaks)} responses echo a DICOM marker"),
            (bool(log_leaks), f"{len(log_leaks)} log lines echo a DICOM marker, e.g. {log_leaks[:2]}"),
            (not alive, "the server is not answering /healthz at the end"),
            (tracebacks > 0, f"{tracebacks} tracebacks in the server's log"),
            (grown_mb > args.rss_mb, f"resident memory grew {grown_mb:.0f} MB > {args.rss_mb:.0f} MB"),
        ]
        figures["failures"] = [why for bad, why in failures if bad]
        text = json.dumps(figures, indent=2)
        if args.out:
            Path(args.out).write_text(text + "\n")
        print(text)
        if figures["failures"]:
            print("serve_storm: " + "; ".join(figures["failures"]), file=sys.stderr)
            return 1
        return 0


if __name__ == "__main__":
    sys.exit(main())
