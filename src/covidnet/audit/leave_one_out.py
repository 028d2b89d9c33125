"""Test 3, leave-one-source-out: for each source holding more than one class, retrain without it (the
checkpoint's own recipe, a short schedule) and compare it with the other sources' test split."""

from __future__ import annotations

import tempfile
from collections import defaultdict
from pathlib import Path

from ..data.store import open_store
from ..errors import ConfigError
from ..runtime import load
from .verdicts import LOSO_FAIL, LOSO_WARN, threshold_verdict


def leave_one_source_out(checkpoint_meta: dict, data: str, epochs: int, device: str, seed: int = 0) -> dict:
    """For each source that holds more than one class: retrain on the other sources (``covidnet train``,
    the checkpoint's own recipe, ``epochs`` epochs) and compare the held-out source (external) with the
    other sources' test split (internal). A derived dataset shares the store's images (a link) and only
    rewrites its index."""
    base = {
        "test": "leave-one-source-out",
        "epochs": epochs,
        "thresholds": {"drop_warning": LOSO_WARN, "drop_fail": LOSO_FAIL, "metric": "balanced accuracy"},
    }
    if epochs <= 0:
        return {**base, "verdict": "skipped", "reason": "retraining is optional: pass --loso-epochs N to run it"}
    store = open_store(data)
    by_source = defaultdict(set)
    for r in store.index:
        by_source[r["source"]].add(r["label"])
    held = sorted(s for s, labs in by_source.items() if len(labs) > 1)
    if len(by_source) < 2 or not held:
        return {**base, "verdict": "skipped", "reason": "needs two sources, one of them with more than one class"}
    with tempfile.TemporaryDirectory() as tmp:
        results = {s: _without_source(store, s, checkpoint_meta, Path(tmp), epochs, device, seed) for s in held}
    drops = [
        r["internal_balanced_accuracy"] - r["external_balanced_accuracy"]
        for r in results.values()
        if r.get("internal_balanced_accuracy") is not None
    ]
    worst = max(drops) if drops else float("nan")
    verdict = threshold_verdict(worst, LOSO_WARN, LOSO_FAIL)
    return {
        **base,
        "verdict": verdict,
        "per_source": results,
        "largest_drop": worst,
        "reading": (
            f"Trained without a source and tested on it, balanced accuracy falls by up to {worst:.2f} against the "
            "other sources' test split"
            + (": performance does not carry to a new hospital." if verdict != "ok" else ", within the threshold.")
        )
        if drops
        else "no internal test split",
    }


def _without_source(store, held: str, checkpoint_meta: dict, tmp: Path, epochs: int, device: str, seed: int) -> dict:
    """One held-out source: retrain on the others (in ``tmp``) and score the held-out source (external) and
    the others' test split (internal) by balanced accuracy; a reason where that cannot be done."""
    import dataclasses

    from sklearn.metrics import balanced_accuracy_score

    from ..evaluate import predict_store
    from ..train import TrainConfig, train

    ds = tmp / f"without-{held}"
    store.derive(ds, ["external" if r["source"] == held else r["split"] for r in store.index])
    others = [r for r in store.index if r["source"] != held]
    if not any(r["split"] == "train" for r in others) or not any(r["split"] == "val" for r in others):
        return {"skipped": "the other sources have no train or val images"}
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    cfg = {k: v for k, v in checkpoint_meta["train_config"].items() if k in fields}
    cfg.update(
        data=str(ds),
        out=str(tmp / f"run-{held}"),
        epochs=epochs,
        resume=False,
        progress=False,
        init="random",
        seed=seed,
        device=device,
    )
    try:
        train(TrainConfig(**cfg))
    except ConfigError as e:  # e.g. --debias source with no class left in two sources
        return {"skipped": f"the checkpoint's recipe cannot train without {held}: {e}"}
    lm = load(tmp / f"run-{held}" / "best.pt", device, tasks=("classification",), backend="torch")
    scores = {}
    for split in ("test", "external"):
        if not any(r["split"] == split for r in open_store(ds).index):
            continue
        p = predict_store(lm, str(ds), split)
        scores[split] = float(balanced_accuracy_score(p.y, p.out.argmax(1)))
    return {
        "internal_balanced_accuracy": scores.get("test"),
        "external_balanced_accuracy": scores["external"],
        "n_external": sum(r["source"] == held for r in store.index),
    }
