"""``covidnet profile``: parameters, MACs, latency and peak memory; ``--paper`` beside the published table."""

from __future__ import annotations

import json
import sys

from .common import table
from .flags import add_config_flags, config_class, config_from_args


def register(sub, flags: bool = True) -> None:
    p = sub.add_parser(
        "profile",
        help="parameters, MACs, CPU latency and peak memory of architectures",
        description="Parameters, MACs (FLOPs/2), batch-1 latency (median after warm-up) and peak memory.",
    )
    p.set_defaults(func=run)
    if flags and (cls := config_class(p, "profile", "ProfileConfig")):  # None without the [torch] extra
        add_config_flags(p, cls)


def _fmt(v, unit: str, scale: float, digits: int = 2) -> str:
    return "—" if v is None else f"{v / scale:.{digits}f} {unit}"


def _pct(ours: float, published: float | None) -> str:
    return "" if published is None else f"{(ours / published - 1) * 100:+.1f} %"


def _progress(enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return lambda it: tqdm(it, desc="profiling", unit="model", file=sys.stderr, leave=False)


def run(args) -> int:
    from ..profile import ProfileConfig, profile_model

    cfg = config_from_args(ProfileConfig, args)
    names = cfg.names()
    common = dict(runs=cfg.runs, warmup=cfg.warmup, device=cfg.device, threads=cfg.threads)
    if cfg.paper:
        return _paper(cfg, common)
    progress = _progress(cfg.progress and len(names) > 1)
    profiles = [
        profile_model(n, cfg.size, in_channels=cfg.in_channels, **common).to_dict()
        for n in (progress(names) if progress else names)
    ]
    if cfg.json:
        print(json.dumps(profiles[0] if len(profiles) == 1 else profiles, indent=2))
        return 0
    dev = cfg.device.split(":")[0]
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
        f"(median of {p['latency_runs']} runs after {cfg.warmup} warm-up, {p['threads']} threads, "
        f"torch {p['torch_version']})"
        if p["latency_runs"]
        else "(latency not measured: --runs 0)"
    )
    return 0


def _paper(cfg, common: dict) -> int:
    """The reference's published model table, each configuration beside our measurement of its preset."""
    from ..profile import paper_comparison

    rows = paper_comparison(progress=_progress(cfg.progress), **common)
    if cfg.json:
        print(json.dumps(rows, indent=2))
        return 0
    out = []
    for r in rows:
        o = r["ours"]
        lat = o and o[f"latency_ms_{cfg.device.split(':')[0]}"]
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
                f"latency {cfg.device} b=1",
            ],
            out,
        )
    )
    return 0
