"""``covidnet profile``: parameters, MACs, latency and peak memory; ``--paper`` beside the published table."""

from __future__ import annotations

import json
import sys

from ..errors import UsageError
from .common import table


def register(sub, flags: bool = True) -> None:
    p = sub.add_parser(
        "profile",
        help="parameters, MACs, CPU latency and peak memory of architectures",
        description="Parameters, MACs (FLOPs/2), batch-1 latency (median after warm-up) and peak memory.",
    )
    p.set_defaults(func=run)
    if not flags:
        return
    p.add_argument("arch", nargs="*", metavar="ARCH", help="architecture name(s); see `covidnet models`")
    p.add_argument("--all", action="store_true", help="every registered architecture at its default size")
    p.add_argument("--paper", action="store_true", help="the reference's published model table beside our measurements")
    p.add_argument("--size", type=int, default=None, help="input side in pixels (default: the architecture's own)")
    p.add_argument("--in-channels", type=int, choices=(1, 3), default=3, help="input channels (default 3)")
    p.add_argument("--runs", type=int, default=10, help="timed forwards; 0 skips latency and memory (default 10)")
    p.add_argument("--warmup", type=int, default=3, help="untimed forwards before timing (default 3)")
    p.add_argument("--device", default="cpu", help="device for latency and memory, e.g. cpu or cuda (default cpu)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--json", action="store_true", help="print one JSON object (a list for several)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _fmt(v, unit: str, scale: float, digits: int = 2) -> str:
    return "—" if v is None else f"{v / scale:.{digits}f} {unit}"


def _pct(ours: float, published: float | None) -> str:
    return "" if published is None else f"{(ours / published - 1) * 100:+.1f} %"


def _progress(quiet: bool):
    if quiet:
        return None
    from tqdm import tqdm

    return lambda it: tqdm(it, desc="profiling", unit="model", file=sys.stderr, leave=False)


def run(args) -> int:
    from ..models import get_spec, list_models
    from ..profile import profile_model

    common = dict(runs=args.runs, warmup=args.warmup, device=args.device, threads=args.threads)
    if args.paper:
        if args.arch or args.all:
            raise UsageError("--paper profiles the reference's configurations; give it no ARCH and no --all")
        return _paper(args, common)

    names = list_models() if args.all else args.arch
    if not names:
        raise UsageError("give an architecture (ARCH), --all or --paper; names: " + ", ".join(list_models()))
    for n in names:
        get_spec(n)  # fail on a wrong name before profiling anything
    progress = _progress(args.quiet or len(names) == 1)
    profiles = [
        profile_model(n, args.size, in_channels=args.in_channels, **common).to_dict()
        for n in (progress(names) if progress else names)
    ]
    if args.json:
        print(json.dumps(profiles[0] if len(profiles) == 1 else profiles, indent=2))
        return 0
    dev = args.device.split(":")[0]
    rows = [
        [
            p["arch"],
            f"{p['in_channels']}×{p['size']}×{p['size']}",
            _fmt(p["params"], "M", 1e6),
            _fmt(p["macs"], "G", 1e9),
            _fmt(p[f"latency_ms_{dev}"], "ms", 1, 1),
            _fmt(p["peak_mem_mb"], "MiB", 1, 0),
        ]
        for p in profiles
    ]
    print(table(["arch", "input", "params", "MACs", f"latency {dev} b=1", "peak memory"], rows))
    p = profiles[0]
    print(
        f"(median of {p['latency_runs']} runs after {args.warmup} warm-up, {p['threads']} threads, "
        f"torch {p['torch_version']})"
        if p["latency_runs"]
        else "(latency not measured: --runs 0)"
    )
    return 0


def _paper(args, common: dict) -> int:
    """The reference's published model table, each configuration beside our measurement of its preset."""
    from ..profile import paper_comparison

    rows = paper_comparison(progress=_progress(args.quiet), **common)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    out = []
    for r in rows:
        o = r["ours"]
        lat = o and o[f"latency_ms_{args.device.split(':')[0]}"]
        pub_p = f"{r['params_m']} M" if r["params_m"] else "—"
        pub_m = f"{r['macs_g']:.2f} G" if r["macs_g"] else "—"
        if o:
            out.append(
                [
                    r["model"],
                    f"{r['size']}",
                    pub_p,
                    pub_m,
                    o["arch"],
                    _fmt(o["params"], "M", 1e6),
                    _fmt(o["macs"], "G", 1e9),
                    _pct(o["params"] / 1e6, r["params_m"]),
                    _pct(o["macs"] / 1e9, r["macs_g"]),
                    _fmt(lat, "ms", 1, 1),
                ]
            )
        else:
            out.append([r["model"], f"{r['size']}", pub_p, pub_m, "(no preset)", "", "", "", "", ""])
    print("COVID-Net model table: published (reference docs/models.md, Sci. Rep. 2020) beside measured here")
    print(
        table(
            [
                "configuration",
                "input",
                "pub. params",
                "pub. MACs",
                "ours",
                "params",
                "MACs",
                "Δ params",
                "Δ MACs",
                f"latency {args.device} b=1",
            ],
            out,
        )
    )
    return 0
