"""``covidnet eval``: metrics with bootstrap CIs, calibration, per-source breakdown and an HTML report."""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import UsageError
from .common import checkpoint_task, ci, print_metrics, print_severity, table


def register(sub, flags: bool = True) -> None:
    p = sub.add_parser("eval", help="metrics with bootstrap CIs, calibration, per-source breakdown, HTML report",
                       description="Evaluate a checkpoint on a built dataset's split (--data) or on raw images named "
                                   "in a COVIDx label file (--labels FILE --images DIR).")
    p.set_defaults(func=run)
    if not flags:
        return
    p.add_argument("--checkpoint", required=True, help="a checkpoint written by `covidnet train` (best.pt)")
    p.add_argument("--data", help="a dataset folder written by `covidnet data build`")
    p.add_argument("--split", default="test", choices=("train", "val", "test"), help="split of --data (default test)")
    p.add_argument("--labels", help="a COVIDx label file: patientid filename label [source]")
    p.add_argument("--images", help="the folder of the raw images --labels names (PNG, JPEG, WebP, DICOM)")
    p.add_argument("--resamples", type=int, default=1000,
                   help="bootstrap resamples of patients (default 1000; 0: no CIs)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")
    p.add_argument("--json", metavar="OUT", help="write the metrics as JSON to OUT")
    p.add_argument("--report", metavar="OUT_DIR", help="write an HTML report with figures to OUT_DIR")
    p.add_argument("--cam-method", default="gradcam", help="heat maps in the report: gradcam or gradcam++")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda (default auto)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args) -> int:
    # The one place that picks the evaluation by the checkpoint's task: it goes once evaluate_checkpoint
    # takes every task (the checkpoint is read twice until then).
    if checkpoint_task(args.checkpoint) != "classification":
        return _run_task(args)
    return _run_classification(args)


def _run_classification(args) -> int:
    from ..evaluate import evaluate_checkpoint
    from ..report import write_json

    m = evaluate_checkpoint(args.checkpoint, data=args.data, split=args.split, labels=args.labels, images=args.images,
                            resamples=args.resamples, seed=args.seed, device=args.device, report=args.report,
                            cam_method=args.cam_method, progress=not args.quiet)
    for f in m["failed"][:20]:
        print(f"covidnet: warning: {f['item']}: {f['error']}", file=sys.stderr)
    if args.json:
        write_json(args.json, m)
    print_metrics(m)
    print(f"{m['processed']} images evaluated, {m['failed_count']} failed"
          + (f"; JSON: {args.json}" if args.json else "")
          + (f"; report: {Path(args.report) / 'index.html'}" if args.report else ""))
    return 0


def _run_task(args) -> int:
    """A severity or risk checkpoint (covidnet.severity)."""
    from ..report import write_json
    from ..severity import evaluate_task_checkpoint

    if args.data is None or args.labels is not None:
        raise UsageError(f"{args.checkpoint}: a severity or risk checkpoint is evaluated on a built dataset: give "
                         "--data DIR (built with --severity FILE for severity), not --labels")
    m = evaluate_task_checkpoint(args.checkpoint, args.data, args.split, args.resamples, args.seed, args.device,
                                 args.report, args.cam_method)
    if args.json:
        write_json(args.json, m)
    print(f"{m['task']}: {m['n']} images of {m['n_patients']} patients ({args.split}); 95 % CIs from "
          f"{m['bootstrap']['resamples']} bootstrap resamples of patients")
    if m["task"] == "severity":
        print_severity(m)
    else:
        print(f"accuracy {ci(m['accuracy'])}   macro F1 {ci(m['macro_f1'])}   mean absolute bin error "
              f"{ci(m['mean_abs_bin_error'])}")
        cm = m["confusion_matrix"]
        print("confusion matrix (rows: true bin of days since onset, columns: predicted)")
        print(table(["", *cm["labels"]], [[c, *map(str, row)] for c, row in zip(cm["labels"], cm["matrix"])]))
    if args.json or args.report:
        print("; ".join(([f"JSON: {args.json}"] if args.json else [])
                        + ([f"report: {Path(args.report) / 'index.html'}"] if args.report else [])))
    return 0
