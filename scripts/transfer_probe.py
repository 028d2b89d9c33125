"""A linear probe on the frozen features of a transfer study's self-supervised pretrainings, out of fold (issue:
does pretraining help?): for each fold whose pretraining is complete, scikit-learn's logistic regression on the
standardised pooled features of the fold's training images (its labels, classes weighted to balance), scored
(balanced accuracy, chance 1 / the number of classes) on the fold's held-out images; beside it, the same probe
on the same architecture's random weights and, where it has them, its ImageNet weights. What the pretraining put
into the backbone before any fine-tuning, which the study's fine-tuned arms cannot tell apart from what
fine-tuning did. Prints one JSON line per fold. Results: docs/training.md.

    .venv/bin/python scripts/transfer_probe.py STUDY ARCH [FOLD ...]
    .venv/bin/python scripts/transfer_probe.py transfer128 efficientnet-lite0 0 1 2
"""

import json
import sys
from pathlib import Path

import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.preprocessing import StandardScaler

from covidnet.data.store import open_store
from covidnet.models import create_model, get_spec
from covidnet.runtime import load


def probe(lm, store, fit, scored) -> float:
    """Balanced accuracy on ``scored`` of a logistic regression on ``lm``'s frozen features of ``fit``."""
    a, b = lm.features(store, fit), lm.features(store, scored)
    scale = StandardScaler().fit(a)
    clf = LogisticRegression(max_iter=5000, C=0.1, class_weight="balanced").fit(scale.transform(a), store.labels(fit))
    return round(float(balanced_accuracy_score(store.labels(scored), clf.predict(scale.transform(b)))), 3)


def main(study, arch, *folds):
    study = Path(study)
    for k in [int(f) for f in folds]:
        ckpt = study / "pretrain" / arch / f"fold{k}" / "best.pt"
        if json.loads((ckpt.parent / "run.json").read_text(encoding="utf-8"))["state"] != "complete":
            print(f"{ckpt.parent}: pretraining not complete, fold {k} skipped", file=sys.stderr)
            continue
        store, lm = open_store(study / "folds" / f"fold{k}"), load(ckpt, "cpu")
        fit, scored = store.rows("train"), store.rows("test")
        out = {"fold": k, "arch": arch, "fit": len(fit), "scored": len(scored)}
        out["ssl"] = probe(lm, store, fit, scored)
        torch.manual_seed(k)
        model = create_model(arch, num_classes=2, in_channels=lm.contract.in_channels)
        lm.model.load_state_dict(model.state_dict())
        out["random"] = probe(lm, store, fit, scored)
        if get_spec(arch).imagenet is not None:
            get_spec(arch).imagenet(model)
            lm.model.load_state_dict(model.state_dict())
            out["imagenet"] = probe(lm, store, fit, scored)
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
