"""The ``covidnet`` command: parses arguments, calls the Python API, prints the result.

A ``CovidnetError`` becomes one line on stderr and exit status 1; usage errors exit 2 (argparse).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from . import __version__
from .errors import CovidnetError, UsageError


def _fmt(v, unit: str, scale: float, digits: int = 2) -> str:
    return "—" if v is None else f"{v / scale:.{digits}f} {unit}"


def _pct(ours: float, published: float | None) -> str:
    return "" if published is None else f"{(ours / published - 1) * 100:+.1f} %"


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def _readers() -> list[str]:
    from .data.sources import READERS

    return list(READERS)


def _progress(quiet: bool):
    if quiet:
        return None
    from tqdm import tqdm

    return lambda it: tqdm(it, desc="profiling", unit="model", file=sys.stderr, leave=False)


def cmd_models(args) -> int:
    from .models import get_spec, list_models

    rows = []
    for name in list_models():
        s = get_spec(name)
        pub = f"{s.published.params_m} M / {s.published.macs_g} G @ {s.published.size}" if s.published else ""
        rows.append([name, str(s.input_size), pub, s.description])
    if args.json:
        print(json.dumps([{"arch": r[0], "input_size": int(r[1]), "description": r[3]} for r in rows], indent=2))
    else:
        print(_table(["arch", "input", "published", "description"], rows))
    return 0


def cmd_profile(args) -> int:
    from .models import get_spec, list_models
    from .profile import paper_comparison, profile_model

    common = dict(runs=args.runs, warmup=args.warmup, device=args.device, threads=args.threads)
    if args.paper:
        if args.arch or args.all:
            raise UsageError("--paper profiles the reference's configurations; give it no ARCH and no --all")
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
                out.append([r["model"], f"{r['size']}", pub_p, pub_m, o["arch"], _fmt(o["params"], "M", 1e6),
                            _fmt(o["macs"], "G", 1e9), _pct(o["params"] / 1e6, r["params_m"]),
                            _pct(o["macs"] / 1e9, r["macs_g"]), _fmt(lat, "ms", 1, 1)])
            else:
                out.append([r["model"], f"{r['size']}", pub_p, pub_m, "(no preset)", "", "", "", "", ""])
        print("COVID-Net model table: published (reference docs/models.md, Sci. Rep. 2020) beside measured here")
        print(_table(["configuration", "input", "pub. params", "pub. MACs", "ours", "params", "MACs",
                      "Δ params", "Δ MACs", f"latency {args.device} b=1"], out))
        return 0

    names = list_models() if args.all else args.arch
    if not names:
        raise UsageError("give an architecture (ARCH), --all or --paper; names: " + ", ".join(list_models()))
    for n in names:
        get_spec(n)  # fail on a wrong name before profiling anything
    progress = _progress(args.quiet or len(names) == 1)
    profiles = [profile_model(n, args.size, in_channels=args.in_channels, **common).to_dict()
                for n in (progress(names) if progress else names)]
    if args.json:
        print(json.dumps(profiles[0] if len(profiles) == 1 else profiles, indent=2))
        return 0
    dev = args.device.split(":")[0]
    rows = [[p["arch"], f"{p['in_channels']}×{p['size']}×{p['size']}", _fmt(p["params"], "M", 1e6),
             _fmt(p["macs"], "G", 1e9), _fmt(p[f"latency_ms_{dev}"], "ms", 1, 1), _fmt(p["peak_mem_mb"], "MiB", 1, 0)]
            for p in profiles]
    print(_table(["arch", "input", "params", "MACs", f"latency {dev} b=1", "peak memory"], rows))
    p = profiles[0]
    print(f"(median of {p['latency_runs']} runs after {args.warmup} warm-up, {p['threads']} threads, torch {p['torch_version']})"
          if p["latency_runs"] else "(latency not measured: --runs 0)")
    return 0


def cmd_data_build(args) -> int:
    from .data.build import BuildConfig, SourceSpec, build_dataset, parse_split_file_arg

    cfg = BuildConfig(
        sources=[SourceSpec.parse(s) for s in args.source], out=Path(args.out), size=args.size,
        top_crop=args.top_crop, val_fraction=args.val_fraction, test_fraction=args.test_fraction, seed=args.seed,
        split_files=[parse_split_file_arg(s) for s in args.split_file], paediatric=args.paediatric,
        workers=args.workers, strict=args.strict, overwrite=args.overwrite, progress=not args.quiet,
        severity=Path(args.severity) if args.severity else None, split=args.split,
    )
    report = build_dataset(cfg)
    _warn_exclusions(report)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    rows = []
    for split in ("train", "val", "test"):
        t = report["totals"][split]
        rows.append([split, *(str(t[c]) for c in t), str(sum(t.values()))])
    print(_table(["split", *report["totals"]["train"].keys(), "total"], rows))
    ex = report["excluded"]
    print(f"{report['n_images']} images of {report['n_patients']} patients in {cfg.out} "
          f"({report['images_per_s']:.0f} images/s); {ex['count']} excluded:")
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
    """What the severity file and the offsets give the severity and risk tasks."""
    sev, risk = report.get("severity"), report["risk"]
    if sev:
        d = sev["in_dataset"]
        print(f"severity: {sev['rows_joined']} of {sev['rows']} rows of {sev['file']} joined; scored images per split "
              + ", ".join(f"{s} {n} ({d['patients'][s]} patients)" for s, n in d["images"].items())
              + (f"; {d['scored_images_left_out_by_the_build']} scored images left out by the build" if d["scored_images_left_out_by_the_build"] else ""))
        for reason, n in sev["excluded"]["by_reason"].items():
            print(f"  {n:6d}  {reason}")
    print(f"risk: {risk['with_offset']} of {risk['covid_images']} COVID-19 images have days since onset (offset)"
          + "".join(f"; {n} {reason}" for reason, n in risk["excluded"]["by_reason"].items()))


def _warn_exclusions(report: dict, limit: int = 20) -> None:
    """One line on stderr for each record excluded for an error (not a documented filter), and for each
    row of a severity file left out."""
    from .data.build import FILTER_REASONS

    errors = [e for e in report["excluded"]["items"] if e["reason"] not in FILTER_REASONS]
    errors += (report.get("severity") or {}).get("excluded", {}).get("items", [])
    for e in errors[:limit]:
        print(f"covidnet: warning: {e['item']}: {e['reason']}" + (f" ({e['detail']})" if e["detail"] else ""), file=sys.stderr)
    if len(errors) > limit:
        print(f"covidnet: warning: … and {len(errors) - limit} more; every one is in report.json", file=sys.stderr)


def cmd_data_synth(args) -> int:
    from .data.synth import SynthConfig, write_phantom_dataset

    cfg = SynthConfig(n=args.n, seed=args.seed, size=args.size, shortcut=args.shortcut)
    out = write_phantom_dataset(Path(args.out), cfg, progress=not args.quiet)
    print(f"{args.n} phantom radiographs in {out} (cohen layout: build with --source cohen={out})")
    return 0


TRAIN_HELP = {
    "data": "a dataset folder written by `covidnet data build`",
    "out": "run folder: config, log.csv, last.pt, best.pt, run.json",
    "arch": "architecture (see `covidnet models`)",
    "epochs": "epochs", "batch_size": "images per step, over all processes together",
    "lr": "Adam learning rate", "scale_lr": "multiply --lr by batch-size/8 (linear rule for larger batches)",
    "weight_decay": "Adam weight decay", "plateau_factor": "ReduceLROnPlateau factor on the validation loss",
    "plateau_patience": "ReduceLROnPlateau patience (epochs)", "size": "input side in px; 0: the dataset's stored size",
    "in_channels": "1 (grey) or 3 (grey repeated)", "binary": "negative/positive instead of normal/pneumonia/COVID-19",
    "covid_percent": "share of each batch drawn from COVID-19, in [0, 1); 0 turns rebalancing off",
    "class_weights": "loss weights: reference (COVID-19 x4), none, balanced, or one number per class (e.g. 1,1,4)",
    "translate": "augmentation: max shift, fraction of the side", "rotate": "augmentation: max rotation, degrees",
    "hflip": "augmentation: horizontal flip probability", "brightness": "augmentation: max brightness change, fraction",
    "zoom_min": "augmentation: smallest zoom", "zoom_max": "augmentation: largest zoom",
    "init": "random, imagenet (torchvision baselines), or a checkpoint path (classifier re-initialised)",
    "seed": "seed of every random choice", "device": "auto, cpu, cuda or cuda:N",
    "amp": "bf16 autocast on GPU", "channels_last": "channels-last memory format",
    "compile": "torch.compile: auto (GPU only), on, off", "eval_batch_size": "batch size for validation",
    "precise_bn": "training images (unaugmented) that recompute BatchNorm statistics before each validation; 0: off",
    "resume": "continue the run in --out from its last.pt", "progress": "progress bars and per-epoch lines",
    "task": "classification; severity (COVIDNet-S geographic and opacity extent, 0-8; needs a build with --severity); "
            "risk (COVID-RiskNet: COVID-19 images in bins of days since symptom onset)",
    "freeze_backbone": "train only the head on the frozen features of --init (COVIDNet-S's setting)",
    "risk_bins": "--task risk: inner bin edges in days, e.g. 3,5,10 for [0-3), [3-5), [5-10), >=10",
}


def _add_dataclass_args(p: argparse.ArgumentParser, cls, helps: dict, required=("data", "out")) -> None:
    """One flag per dataclass field, so the CLI and the config (written next to every run) cannot drift."""
    import dataclasses

    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        if f.name in required:
            p.add_argument(flag, required=True, help=helps.get(f.name))
        elif f.type in ("bool", bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=helps.get(f.name))
        else:
            kind = {"int": int, "float": float}.get(str(f.type), str)
            p.add_argument(flag, type=kind, default=f.default, help=f"{helps.get(f.name, '')} (default {f.default})")


def _raise(e: BaseException):
    raise e


def cmd_train(args) -> int:
    import dataclasses

    from .train import TrainConfig, train

    cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})
    summary = train(cfg)
    if summary.get("final") is not None and int(os.environ.get("RANK", "0")) == 0:
        f = summary["final"]
        last = {"classification": ("val accuracy", "val_acc"), "risk": ("val accuracy", "val_accuracy"),
                "severity": ("val R² geographic / opacity", ("val_geographic_r2", "val_opacity_r2"))}[cfg.task]
        value = " / ".join(f"{f[k]:.3f}" for k in ((last[1],) if isinstance(last[1], str) else last[1]))
        print(f"done: {cfg.out} — best validation loss {summary['best_val_loss']:.4f}; last epoch {last[0]} "
              f"{value}; {summary['images_per_s']:.0f} images/s on {summary['device']}")
    return 0


def _ci(entry: dict) -> str:
    v, ci = entry["value"], entry["ci95"]
    if v is None or v != v:
        return "—"
    return f"{v:.3f}" + (f" ({ci[0]:.3f}–{ci[1]:.3f})" if ci else "")


def print_metrics(m: dict) -> None:
    classes = m["confusion_matrix"]["labels"]
    print(f"{m['n']} images of {m['n_patients']} patients; 95 % CIs from {m['bootstrap']['resamples']} bootstrap "
          f"resamples of patients")
    print(f"accuracy {_ci(m['accuracy'])}   ECE {m['ece']:.3f}" + (f"   temperature {m['temperature']:.3f}" if m.get("temperature") else ""))
    rows = [[c, *(_ci(m["per_class"][c][k]) for k in ("sensitivity", "ppv", "specificity", "f1", "auc"))] for c in classes]
    rows.append(["macro", *(_ci(m["macro"][k]) for k in ("sensitivity", "ppv", "specificity", "f1", "auc"))])
    print(_table(["class", "sensitivity", "PPV", "specificity", "F1", "AUC"], rows))
    print("confusion matrix (rows: truth, columns: prediction)")
    print(_table(["", *classes], [[c, *map(str, row)] for c, row in zip(classes, m["confusion_matrix"]["matrix"])]))
    for source, sm in (m.get("per_source") or {}).items():
        print(f"source {source}: {sm['n']} images, accuracy {_ci(sm['accuracy'])}, "
              + ", ".join(f"{c} sensitivity {_ci(sm['per_class'][c]['sensitivity'])}" for c in classes))


def _checkpoint_task(path: str) -> str:
    from .checkpoint import read_checkpoint

    return read_checkpoint(path).get("task", "classification")


def cmd_eval(args) -> int:
    from .evaluate import evaluate_checkpoint
    from .report import write_json

    if _checkpoint_task(args.checkpoint) != "classification":
        return _eval_task(args)

    m = evaluate_checkpoint(args.checkpoint, data=args.data, split=args.split, labels=args.labels, images=args.images,
                            resamples=args.resamples, seed=args.seed, device=args.device, report=args.report,
                            cam_method=args.cam_method, progress=not args.quiet)
    for f in m["failed"][:20]:
        print(f"covidnet: warning: {f['item']}: {f['error']}", file=sys.stderr)
    if args.json:
        write_json(args.json, m)
    print_metrics(m)
    print(f"{m['processed']} images evaluated, {m['failed_count']} failed"
          + (f"; JSON: {args.json}" if args.json else "") + (f"; report: {Path(args.report) / 'index.html'}" if args.report else ""))
    return 0


def cmd_predict(args) -> int:
    from .predict import predict_paths

    if args.checkpoint and _checkpoint_task(args.checkpoint) != "classification":
        return _predict_task(args)

    ok = failed = 0
    results = predict_paths(args.checkpoint, args.inputs, args.batch_size, args.device, args.threshold, args.cam,
                            args.cam_method, args.operating_point, onnx=args.onnx)
    if not args.quiet and sys.stderr.isatty():
        from tqdm import tqdm

        results = tqdm(results, unit="img", file=sys.stderr, leave=False)
    for r in results:
        if r["status"] == "ok":
            ok += 1
        else:
            failed += 1
        if args.json:
            print(json.dumps(r), flush=True)
        elif r["status"] == "ok":
            probs = " ".join(f"{c} {p:.3f}" for c, p in r["probabilities"].items())
            tri = ""
            if "triage" in r:
                t = r["triage"]
                tri = f"  triage: {'FLAG' if t['flag'] else 'no flag'} ({t['class']} {t['probability']:.3f} vs {t['threshold']:.3f})"
            print(f"{r['path']}: {r['label']}  [{probs}]{tri}" + (f"  cam: {r['cam']}" if "cam" in r else ""), flush=True)
        else:
            print(f"{r['path']}: FAILED: {r['error']}", flush=True)
    print(f"{ok} images processed, {failed} failed", file=sys.stderr)
    if ok == 0:
        raise CovidnetError("no image could be processed" if failed else "no images found in the given paths")
    return 0


def cmd_export(args) -> int:
    from .export import ExportConfig, export_model

    r = export_model(ExportConfig(args.checkpoint, args.out, args.format, args.int8, args.opset, args.data,
                                  args.calibration_images, args.quiet))
    f = r["fp32"]
    print(f"parity with PyTorch on {r['parity_inputs']}: max |Δp| {f['max_abs_prob_diff']:.2e} "
          f"(fp32, tolerance {f['tolerance']:g})")
    if "int8" in r:
        q = r["int8"]
        line = f"int8 (calibrated on {q['calibration_images']} training images): max |Δp| vs PyTorch {q['max_abs_prob_diff']:.3f}"
        if "val_accuracy_int8" in q:
            line += (f"; validation accuracy {q['val_accuracy_fp32']:.3f} (fp32) -> {q['val_accuracy_int8']:.3f} (int8), "
                     f"change {100 * q['val_accuracy_change']:+.1f} points on {q['val_images']} images")
        print(line)
        print(f"fp32 model kept at {r['fp32_path']}")
    print(f"wrote {r['path']} ({r['bytes'] / 1e6:.1f} MB)")
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2) + "\n")
    return 0


def cmd_serve(args) -> int:
    from .serve import ServeConfig, serve

    token = args.token or os.environ.get("COVIDNET_TOKEN") or None
    serve(ServeConfig(args.checkpoint, args.onnx, args.host, args.port, args.device, token, args.max_upload_mb,
                      args.max_pixels, args.max_batch, args.batch_wait_ms, args.queue_size, args.timeout_s,
                      args.threshold, args.operating_point, args.cors_origin or [], args.keep_uploads,
                      args.threads))
    return 0


# --- severity and risk checkpoints (covidnet.severity) ----------------------------------------------


def _print_severity(m: dict) -> None:
    from .severity import SEVERITY_METRICS

    print(_table(["score (0-8)", "MAE", "RMSE", "R²", "Spearman"],
                 [[f"{s} extent", *(_ci(m[s][k]) for k in SEVERITY_METRICS)] for s in ("geographic", "opacity")]))


def _eval_task(args) -> int:
    from .report import write_json
    from .severity import evaluate_task_checkpoint

    if args.data is None or args.labels is not None:
        raise UsageError(f"{args.checkpoint}: a severity or risk checkpoint is evaluated on a built dataset: give --data "
                         "DIR (built with --severity FILE for severity), not --labels")
    m = evaluate_task_checkpoint(args.checkpoint, args.data, args.split, args.resamples, args.seed, args.device,
                                 args.report, args.cam_method)
    if args.json:
        write_json(args.json, m)
    print(f"{m['task']}: {m['n']} images of {m['n_patients']} patients ({args.split}); 95 % CIs from "
          f"{m['bootstrap']['resamples']} bootstrap resamples of patients")
    if m["task"] == "severity":
        _print_severity(m)
    else:
        print(f"accuracy {_ci(m['accuracy'])}   macro F1 {_ci(m['macro_f1'])}   mean absolute bin error "
              f"{_ci(m['mean_abs_bin_error'])}")
        cm = m["confusion_matrix"]
        print("confusion matrix (rows: true bin of days since onset, columns: predicted)")
        print(_table(["", *cm["labels"]], [[c, *map(str, row)] for c, row in zip(cm["labels"], cm["matrix"])]))
    if args.json or args.report:
        print("; ".join(([f"JSON: {args.json}"] if args.json else [])
                        + ([f"report: {Path(args.report) / 'index.html'}"] if args.report else [])))
    return 0


def _predict_task(args) -> int:
    from .severity import predict_task_paths

    if args.threshold or args.operating_point:
        raise UsageError(f"{args.checkpoint}: --threshold and --operating-point are for classification checkpoints")
    ok = failed = 0
    for r in predict_task_paths(args.checkpoint, args.inputs, args.batch_size, args.device, args.cam, args.cam_method):
        ok, failed = ok + (r["status"] == "ok"), failed + (r["status"] != "ok")
        if args.json:
            print(json.dumps(r), flush=True)
        elif r["status"] != "ok":
            print(f"{r['path']}: FAILED: {r['error']}", flush=True)
        elif r["task"] == "severity":
            top = r["scale"][1]
            cams = f"  cam: {', '.join(r['cam'].values())}" if "cam" in r else ""
            print(f"{r['path']}: geographic extent {r['scores']['geographic']:.1f}/{top:g}  opacity extent "
                  f"{r['scores']['opacity']:.1f}/{top:g}{cams}", flush=True)
        else:
            probs = " ".join(f"{c} {p:.3f}" for c, p in r["probabilities"].items())
            print(f"{r['path']}: days since onset {r['bin']}  [{probs}]" + (f"  cam: {r['cam']}" if "cam" in r else ""),
                  flush=True)
    print(f"{ok} images processed, {failed} failed (research tool: not a clinical assessment)", file=sys.stderr)
    if ok == 0:
        raise CovidnetError("no image could be processed" if failed else "no images found in the given paths")
    return 0


def cmd_calibrate(args) -> int:
    from .evaluate import calibrate_checkpoint

    if not args.temperature and not args.operating_point:
        raise UsageError("give --temperature and/or --operating-point sensitivity=0.95")
    out = calibrate_checkpoint(args.checkpoint, args.data, args.temperature, args.operating_point, args.device)
    if "temperature" in out:
        print(f"temperature {out['temperature']:.3f}: validation ECE {out['ece_before']:.3f} -> {out['ece_after']:.3f}")
    if out.get("operating_point"):
        op = out["operating_point"]
        print(f"operating point {op['target']}: {op['class']} threshold {op['threshold']:.4f} "
              f"(validation sensitivity {op['sensitivity']:.3f}, specificity {op['specificity']:.3f})")
    print(f"stored in {args.checkpoint}")
    return 0


def cmd_demo(args) -> int:
    from .demo import DemoConfig, run_demo

    result = run_demo(DemoConfig(out=args.out, data=args.data, n=args.n, size=args.size, epochs=args.epochs,
                                 severity_epochs=args.severity_epochs, seed=args.seed, overwrite=args.overwrite, progress=not args.quiet))
    print()
    print_metrics(result["metrics"])
    print(f"report: {result['report']}")
    if "severity" in result:
        sev = result["severity"]
        print(f"\nseverity against the phantoms' true extent: {sev['n']} test images of {sev['n_patients']} patients")
        _print_severity(sev)
        print(f"severity report: {result['severity_report']}")
    return 0


def cmd_audit(args) -> int:
    from .audit import run_audit
    from .report import write_json

    a = run_audit(args.checkpoint, args.data, args.split, args.device, args.max_images, args.seed, args.report,
                  args.loso_epochs)
    if args.json:
        write_json(args.json, a)
    print(_table(["test", "verdict", "what it means"], [[s["test"], s["verdict"].upper() if s["verdict"] == "fail"
                                                        else s["verdict"], s["reading"]] for s in a["summary"]]))
    if args.report:
        print(f"report: {Path(args.report) / 'index.html'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="covidnet",
        description="COVID-Net for chest X-rays in PyTorch: a research tool, not a diagnostic device.",
    )
    parser.add_argument("--version", action="version", version=f"covidnet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("models", help="list the registered architectures")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("profile", help="parameters, MACs, CPU latency and peak memory of architectures",
                       description="Parameters, MACs (FLOPs/2), batch-1 latency (median after warm-up) and peak memory.")
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
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser("train", help="train a model on a built dataset (the paper's recipe by default)",
                       description="Train on a dataset built by `covidnet data build`. Defaults are the published recipe; "
                                   "the same command runs under torchrun for several GPUs or machines.")
    try:
        from .train import TrainConfig
    except ModuleNotFoundError as e:  # installed without the [torch] extra: `covidnet train` says what to install
        p.add_argument("args", nargs=argparse.REMAINDER)
        p.set_defaults(func=lambda args, e=e: _raise(e))
    else:
        _add_dataclass_args(p, TrainConfig, TRAIN_HELP)
        p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="metrics with bootstrap CIs, calibration, per-source breakdown, HTML report",
                       description="Evaluate a checkpoint on a built dataset's split (--data) or on raw images named in a "
                                   "COVIDx label file (--labels FILE --images DIR).")
    p.add_argument("--checkpoint", required=True, help="a checkpoint written by `covidnet train` (best.pt)")
    p.add_argument("--data", help="a dataset folder written by `covidnet data build`")
    p.add_argument("--split", default="test", choices=("train", "val", "test"), help="split of --data (default test)")
    p.add_argument("--labels", help="a COVIDx label file: patientid filename label [source]")
    p.add_argument("--images", help="the folder of the raw images --labels names (PNG, JPEG, WebP, DICOM)")
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples of patients (default 1000; 0: no CIs)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")
    p.add_argument("--json", metavar="OUT", help="write the metrics as JSON to OUT")
    p.add_argument("--report", metavar="OUT_DIR", help="write an HTML report with figures to OUT_DIR")
    p.add_argument("--cam-method", default="gradcam", help="heat maps in the report: gradcam or gradcam++")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda (default auto)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="label, probabilities, triage and heat maps for raw images",
                       description="Predict raw images (files or folders, walked recursively): label, every class's "
                                   "probability, a triage decision, and with --cam a Grad-CAM heat map. Research tool, not a diagnosis.")
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR")
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", help="a PyTorch checkpoint (train's best.pt)")
    model.add_argument("--onnx", metavar="MODEL", help="a model written by `covidnet export` (ONNX Runtime; PyTorch "
                                                       "not needed)")
    p.add_argument("--json", action="store_true", help="one JSON object per image, one per line")
    p.add_argument("--cam", metavar="OUT_DIR", help="write a heat-map overlay PNG per image to OUT_DIR")
    p.add_argument("--cam-method", default="gradcam", help="gradcam or gradcam++")
    p.add_argument("--threshold", metavar="CLASS=P", help="flag an image when P(CLASS) >= P, e.g. COVID-19=0.2 "
                                                          "(default: the checkpoint's operating point, if calibrated)")
    p.add_argument("--operating-point", metavar="sensitivity=0.95", help="use the operating point stored by "
                                                                         "`covidnet calibrate` for this target")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("export", help="write a checkpoint as an ONNX model (fp32 or int8) for ONNX Runtime",
                       description="Export a checkpoint to ONNX with a dynamic batch dimension and its preprocessing "
                                   "contract in the metadata; check it against PyTorch (fails above 1e-4 for fp32); with "
                                   "--int8, quantise statically on a built dataset's training images and report the "
                                   "validation accuracy change.")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True, metavar="MODEL.onnx")
    p.add_argument("--format", default="onnx", choices=("onnx",))
    p.add_argument("--int8", action="store_true", help="post-training int8 quantisation (needs --data); the fp32 "
                                                       "model is kept as MODEL.fp32.onnx")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    p.add_argument("--data", metavar="DIR", help="the built dataset: parity on its validation images, int8 "
                                                 "calibration on its training images (default parity: phantoms)")
    p.add_argument("--calibration-images", type=int, default=64, metavar="N")
    p.add_argument("--json", metavar="OUT", help="write what was checked as JSON")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("serve", help="HTTP triage service with a web page (research tool, not a diagnosis)",
                       description="Serve a checkpoint or an exported ONNX model over HTTP: POST /v1/predict (an image "
                                   "or DICOM; ?cam=1 adds a heat map), GET /v1/model, GET /healthz, /docs, and a web "
                                   "page at /. Uploads stay in memory; DICOM header fields are never echoed or logged.")
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
    p.add_argument("--operating-point", metavar="sensitivity=0.95", help="triage by the checkpoint's stored operating point")
    p.add_argument("--cors-origin", action="append", metavar="ORIGIN", help="allow this browser origin (repeatable; "
                                                                            "CORS is off by default)")
    p.add_argument("--keep-uploads", metavar="DIR", help="write each upload to DIR, named by request id "
                                                         "(default: uploads are never written to disk)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads of a forward pass (default: all cores; "
                                                             "fewer leaves cores to decoding uploads)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("calibrate", help="fit a temperature and/or an operating point on validation data",
                       description="Fit temperature scaling and/or choose an operating point on the validation split "
                                   "of a built dataset, and store them in the checkpoint.")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True, help="the dataset folder; its val split is used, never test")
    p.add_argument("--temperature", action="store_true", help="fit temperature scaling")
    p.add_argument("--operating-point", metavar="sensitivity=0.95", help="choose the COVID-19 threshold meeting this")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("audit", help="does the model see the disease or the hospital? source, occlusion, leakage tests",
                       description="Shortcut audit of a checkpoint on a built dataset: source predictability, occlusion, "
                                   "leakage and population confounders, each with a figure, a threshold and a verdict.")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True, help="a dataset folder written by `covidnet data build`")
    p.add_argument("--split", default="test", help="split for the occlusion test (train, val, test or all; default test)")
    p.add_argument("--max-images", type=int, default=0, help="audit a random subset of this many images (0: all)")
    p.add_argument("--loso-epochs", type=int, default=0,
                   help="leave-one-source-out: retrain without each source for this many epochs (0: skip; optional)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--report", metavar="OUT_DIR", help="write an HTML report (summary table first) to OUT_DIR")
    p.add_argument("--json", metavar="OUT", help="write the audit as JSON to OUT")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("demo", help="the whole chain on phantom data (or --data): build, train, evaluate, report",
                       description="Generate phantom radiographs (or read --data), build a dataset, train a COVID-Net on "
                                   "the CPU for a short schedule, evaluate it with an HTML report.")
    p.add_argument("--out", default="demo", help="folder for everything (default ./demo)")
    p.add_argument("--data", action="append", metavar="[READER=]PATH", help="real source folder(s) instead of phantoms "
                                                                            "(READER defaults to cohen)")
    p.add_argument("--n", type=int, default=300, help="phantom images (default 300)")
    p.add_argument("--size", type=int, default=96, help="stored image side (default 96)")
    p.add_argument("--epochs", type=int, default=10, help="training epochs (default 10)")
    p.add_argument("--severity-epochs", type=int, default=6,
                   help="phantoms: epochs fine-tuning the classifier into a severity head (default 6; 0 skips the step)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="replace an earlier demo in --out")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_demo)

    data = sub.add_parser("data", help="build COVIDx-style datasets from public sources; phantom data")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    p = dsub.add_parser("build", help="merge sources, deduplicate, split by patient, preprocess into a store",
                        description="Merge public sources into a dataset: patient-level splits, duplicates removed, "
                                    "images preprocessed once into a memory-mappable store, a report of what was excluded and why.")
    p.add_argument("--source", action="append", required=True, metavar="READER[:NAME]=PATH",
                   help="a source folder in its own layout; READER is one of: " + ", ".join(_readers()) + " (repeatable)")
    p.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    p.add_argument("--size", type=int, default=480, help="side of the stored square images (default 480)")
    p.add_argument("--top-crop", type=float, default=0.08, help="fraction of rows removed at the top (default 0.08)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="share of each class in val (default 0.1)")
    p.add_argument("--test-fraction", type=float, default=0.1, help="share of each class in test (default 0.1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the patient-level split (default 0)")
    p.add_argument("--split-file", action="append", default=[], metavar="[SPLIT=]FILE",
                   help="reproduce an official COVIDx split from its label file (repeatable; the split is read "
                        "from the file name unless given)")
    p.add_argument("--split", choices=("official", "patient"), default="official",
                   help="covidx sources: keep the release's own train/val/test split (official, default) or draw one "
                        "by patient as for any other source (patient)")
    p.add_argument("--paediatric", choices=("exclude", "include"), default="exclude",
                   help="children (age < 18, or a paediatric source such as kermany): exclude (default) or include")
    p.add_argument("--workers", type=int, default=0, help="processes for the images (default: every core)")
    p.add_argument("--strict", action="store_true", help="fail if any record is excluded for an error (not a filter), "
                                                         "or any row of --severity is left out")
    p.add_argument("--severity", metavar="FILE", help="join COVIDNet-S lung severity scores (filename, Geographic, "
                                                      "Opacity; 0-8) to the images by file-name stem")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_data_build)

    p = dsub.add_parser("synth", help="write phantom chest radiographs in the cohen layout",
                        description="Deterministic procedurally drawn chest radiographs (normal, pneumonia, COVID-19), "
                                    "in the layout of the ieee8023 covid-chestxray-dataset, optionally with a planted shortcut.")
    p.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    p.add_argument("--n", type=int, default=120, help="number of images (default 120)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    p.add_argument("--shortcut", choices=("marker", "offset"), default=None,
                   help="plant a shortcut on one hospital's COVID-19 images (for audit tests)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_data_synth)
    return parser


# optional dependencies (pyproject's extras): the one line to print when a command needs one that is absent
_EXTRAS = {"torch": "torch", "torchvision": "torch", "sklearn": "torch", "monai": "torch", "matplotlib": "torch",
           "imagehash": "torch", "onnx": "export", "onnxscript": "export", "onnxruntime": "onnx", "fastapi": "serve",
           "uvicorn": "serve", "python_multipart": "serve", "multipart": "serve", "starlette": "serve"}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CovidnetError as e:
        print(f"covidnet: error: {e}", file=sys.stderr)
        return e.exit_code
    except ModuleNotFoundError as e:
        extra = _EXTRAS.get((e.name or "").split(".")[0])
        if extra is None:
            raise  # a bug, not a missing optional dependency
        print(f"covidnet: error: `covidnet {args.command}` needs {e.name}, which is not installed: "
              f"pip install 'covidnet[{extra}]'", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("covidnet: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like: not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
