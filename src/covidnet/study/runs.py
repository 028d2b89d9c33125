"""One run of a study: train it (or resume it, or reuse it), evaluate it on the study's split, audit it, and
write its result files (``result.json``, the test predictions, the audit) when it is done."""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .. import __version__
from ..files import atomic_path, write_json
from ..metrics.classification import point_metrics
from .planning import STUDY_FILE, StudyConfig
from .variants import Variant

RESULT_FILE = "result.json"  # one run's figures, written when the run is done
PREDICTIONS_FILE = "predictions.npz"  # one run's test predictions (what the summary is computed from) ...
AUDIT_FILE = "audit.json"  # ... and its audit


def _trained(run: Path) -> bool:
    status = run / "run.json"
    return (
        (run / "best.pt").is_file() and status.is_file() and json.loads(status.read_text()).get("state") == "complete"
    )


def audit_figures(audit: dict) -> dict:
    """What the study keeps of one audit: each test's verdict and the figures it compares."""
    t = audit["tests"]
    out = {"verdicts": {k: v["verdict"] for k, v in t.items()}}
    oc = t["occlusion"]
    if oc.get("auc"):
        out["occlusion_auc"] = oc["auc"]
    at = t["attention_inside_lungs"]
    if at.get("worst"):
        out["attention_worst_excess"] = at["worst"]["excess"]["value"]
    loso = t["leave_one_source_out"]
    if loso.get("per_source"):
        out["loso"] = loso["per_source"]
    return out


def convergence(run: Path) -> dict:
    """How a run converged: its validation loss per epoch (log.csv) and the epoch of its best.pt."""
    import csv

    with open(run / "log.csv", newline="") as f:
        val_loss = [float(row["val_loss"]) for row in csv.DictReader(f)]
    best = json.loads((run / "run.json").read_text()).get("best_score") or {}
    return {"val_loss": val_loss, "best_epoch": best.get("epoch")}


def run_all(cfg, runs: list, before: Callable | None = None) -> tuple[dict, list[dict]]:
    """Every run of a plan (``(variant, seed, fold, TrainConfig)``, as ``planning.plan`` gives them) in order,
    each reused, resumed or started (``run_one``), with progress lines and study.json kept up to date ("running"
    and the results so far, so a stopped study resumes where it stopped); ``before(variant, fold, say)`` runs
    first for each (the transfer study's pretraining). Returns study.json's header and the results."""
    folder = Path(cfg.out)
    folder.mkdir(parents=True, exist_ok=True)
    base = {"command": cfg.design.command, "version": __version__, "config": cfg.to_dict()}
    write_json(folder / STUDY_FILE, {**base, "state": "running", "runs": [], "summary": None})
    results: list[dict] = []
    for k, (variant, seed, fold, tc) in enumerate(runs):
        where = f"{variant.name} seed {seed}" + (f" fold {fold}" if fold is not None else "")

        def say(what, k=k, where=where):
            if cfg.progress:
                print(f"covidnet study: [{k + 1}/{len(runs)}] {where}: {what}", file=sys.stderr)

        if before is not None:
            before(variant, fold, say)
        results.append(run_one(cfg, variant, seed, tc, say, fold))
        write_json(folder / STUDY_FILE, {**base, "state": "running", "runs": results, "summary": None})
    return base, results


def run_one(cfg: StudyConfig, variant: Variant, seed: int, tc, say, fold: int | None = None) -> dict:
    """Train (or resume, or reuse) one run, evaluate it on the split (``fold``: its fold, the test split of its
    derived dataset ``tc.data``), audit it; its result.json."""
    from ..audit import AuditConfig, run_audit
    from ..data.store import open_store
    from ..evaluate import predict_store
    from ..runtime import load
    from ..tasks import softmax
    from ..train import train

    run = Path(tc.out)
    if (run / RESULT_FILE).is_file() and (run / PREDICTIONS_FILE).is_file():
        return json.loads((run / RESULT_FILE).read_text())
    t0 = time.time()
    if not _trained(run):
        say("training")
        train(dataclasses.replace(tc, resume=(run / "last.pt").is_file()))
    say("evaluating and auditing")
    lm = load(run / "best.pt", cfg.device, tasks=("classification",), backend="torch")
    data, split = (tc.data, "test") if fold is not None else (cfg.data, cfg.split)
    pred = predict_store(lm, data, split)
    rows = lm.task.rows(open_store(data), split)  # the rows predict_store scored, in its order
    probs = softmax(pred.out, lm.meta.get("temperature"))
    with atomic_path(run / PREDICTIONS_FILE) as tmp:
        with open(tmp, "wb") as f:
            np.savez(
                f,
                rows=rows,
                names=np.array(pred.names),
                y=pred.y,
                probs=probs,
                patients=np.array(pred.patients),
                sources=np.array(pred.sources),
                sites=np.array(pred.sites if pred.sites is not None else [""] * len(pred.names)),
                views=np.array(pred.views if pred.views is not None else [""] * len(pred.names)),
            )
    audit = run_audit(
        AuditConfig(str(run / "best.pt"), data, split, seed=0, loso_epochs=cfg.loso_epochs, device=cfg.device)
    )
    write_json(run / AUDIT_FILE, audit)
    point = point_metrics(pred.y, probs, lm.classes)
    result = {
        "variant": variant.name,
        "seed": seed,
        "fold": fold,
        "run": str(run),
        "classes": lm.classes,
        "n": int(len(pred.y)),
        "accuracy": point["accuracy"],
        "per_class": point["per_class"],
        "audit": {k: v["verdict"] for k, v in audit["tests"].items()},
        "convergence": convergence(run),
        "seconds": time.time() - t0,
    }
    write_json(run / RESULT_FILE, result)
    return result
