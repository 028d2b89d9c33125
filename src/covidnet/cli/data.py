"""``covidnet data build`` (public sources into a dataset) and ``covidnet data synth`` (phantom radiographs)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .common import table
from .flags import add_config_flags, config_from_args


def register(sub, flags: bool = True) -> None:
    data = sub.add_parser("data", help="build COVIDx-style datasets from public sources; phantom data")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    p = dsub.add_parser(
        "build",
        help="merge sources, deduplicate, split by patient, preprocess into a store",
        description="Merge public sources into a dataset: patient-level splits, duplicates removed, "
        "images preprocessed once into a memory-mappable store, a report of what was "
        "excluded and why.",
    )
    p.set_defaults(func=run_build)
    if flags:
        _build_flags(p)
    p = dsub.add_parser(
        "synth",
        help="write phantom chest radiographs in the cohen layout",
        description="Deterministic procedurally drawn chest radiographs (normal, pneumonia, "
        "COVID-19), in the layout of the ieee8023 covid-chestxray-dataset, optionally "
        "with a planted shortcut.",
    )
    p.set_defaults(func=run_synth)
    if flags:
        _synth_flags(p)


def _build_flags(p) -> None:
    from ..data.build import BuildConfig

    add_config_flags(p, BuildConfig)
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def _synth_flags(p) -> None:
    from ..data.synth import SynthConfig

    p.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    add_config_flags(p, SynthConfig, defaults={"n": 120})  # the API's default is a smaller set, for tests
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run_build(args) -> int:
    from ..data.build import BuildConfig, SourceSpec, build_dataset, check_config, parse_split_file_arg
    from ..data.lungmasks import MaskSpec

    cfg = config_from_args(
        BuildConfig,
        args,
        sources=[SourceSpec.parse(s) for s in args.sources],
        split_files=[parse_split_file_arg(s) for s in args.split_files],
        lung_masks=[MaskSpec.parse(s) for s in args.lung_masks],
    )
    check_config(cfg)  # a bad flag fails before the --lungs model is loaded
    segmenter = None
    if cfg.lungs:  # opened here, handed to the build (data never imports runtime); torch only for a .pt
        from ..data.build.lungs import segmenter_threads
        from ..runtime import load

        segmenter = load(cfg.lungs, threads=segmenter_threads(cfg.processes), tasks=("segmentation",))
    report = build_dataset(cfg, segmenter)
    _warn_exclusions(report)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    rows = []
    for split in ("train", "val", "test"):
        t = report["totals"][split]
        rows.append([split, *(str(t[c]) for c in t), str(sum(t.values()))])
    print(table(["split", *report["totals"]["train"].keys(), "total"], rows))
    ex = report["excluded"]
    print(
        f"{report['n_images']} images of {report['n_patients']} patients in {cfg.out} "
        f"({report['images_per_s']:.0f} images/s); {ex['count']} excluded:"
    )
    for reason, n in sorted(ex["by_reason"].items(), key=lambda kv: -kv[1]):
        print(f"  {n:6d}  {reason}")
    if report["official_split"]:
        o = report["official_split"]
        print(f"official split: matched {o['matched']}; {o['missing_count']} listed images not in the sources")
    _print_targets(report)
    for note in report["notes"]:
        print(f"note: {note}")
    print("checks: " + ", ".join(f"{k} {'ok' if v['passed'] else 'FAILED'}" for k, v in report["checks"].items()))
    return 0


def _print_targets(report: dict) -> None:
    """What the severity file and the offsets give the severity and risk tasks, and the lung masks."""
    sev, risk = report.get("severity"), report["risk"]
    if sev:
        d = sev["in_dataset"]
        left_out = d["scored_images_left_out_by_the_build"]
        print(
            f"severity: {sev['rows_joined']} of {sev['rows']} rows of {sev['file']} joined; scored images per split "
            + ", ".join(f"{s} {n} ({d['patients'][s]} patients)" for s, n in d["images"].items())
            + (f"; {left_out} scored images left out by the build" if left_out else "")
        )
        for reason, n in sev["excluded"]["by_reason"].items():
            print(f"  {n:6d}  {reason}")
    print(
        f"risk: {risk['with_offset']} of {risk['covid_images']} COVID-19 images have days since onset (offset)"
        + "".join(f"; {n} {reason}" for reason, n in risk["excluded"]["by_reason"].items())
    )
    lungs = report.get("lung_masks")
    if lungs:
        d = lungs["in_dataset"]
        parts = [f"{s['name']} {s['masks'] - s['left_out']} of {s['masks']} joined" for s in lungs["sets"]]
        if lungs["sets"]:
            per_split = ", ".join(f"{s} {n} ({d['patients'][s]} patients)" for s, n in d["images"].items())
            parts.append(f"annotated images per split {per_split}")
        if lungs["predicted"]:
            parts.append(f"{lungs['predicted']['images']} predicted by {lungs['predicted']['model']}")
        print("lung masks: " + "; ".join(parts))
        for reason, n in lungs["excluded"]["by_reason"].items():
            print(f"  {n:6d}  {reason}")


def _warn_exclusions(report: dict, limit: int = 20) -> None:
    """One line on stderr for each record excluded for an error (not a documented filter), for each row of a
    severity file left out, and for each lung mask left out."""
    from ..data.build import FILTER_REASONS

    errors = [e for e in report["excluded"]["items"] if e["reason"] not in FILTER_REASONS]
    errors += (report.get("severity") or {}).get("excluded", {}).get("items", [])
    errors += (report.get("lung_masks") or {}).get("excluded", {}).get("items", [])
    for e in errors[:limit]:
        print(
            f"covidnet: warning: {e['item']}: {e['reason']}" + (f" ({e['detail']})" if e["detail"] else ""),
            file=sys.stderr,
        )
    if len(errors) > limit:
        print(f"covidnet: warning: … and {len(errors) - limit} more; every one is in report.json", file=sys.stderr)


def run_synth(args) -> int:
    from ..data.synth import SynthConfig, write_phantom_dataset

    cfg = config_from_args(SynthConfig, args)
    out = write_phantom_dataset(Path(args.out), cfg, progress=not args.quiet)
    print(f"{cfg.n} phantom radiographs in {out} (cohen layout: build with --source cohen={out})")
    return 0
