"""A linear probe on the frozen features of a transfer study's self-supervised pretrainings, out of fold (issue:
does pretraining help?): for each fold whose pretraining is complete, scikit-learn's logistic regression on the
standardised pooled features of the fold's training images (its labels, classes weighted to balance), scored
(balanced accuracy, chance 1 / the number of classes) on the fold's held-out images; beside it, the same probe
on the same architecture's random weights and, where it has them, its ImageNet weights. What the pretraining put
into the backbone before any fine-tuning, which the study's fine-tuned arms cannot tell apart from what
fine-tuning did. Beside each probe, view retrieval (``*_retrieval``): how often one view of a held-out film,
drawn as the pretraining draws them, finds the film's other view nearest among all the held-out films' other
views (chance 1 / the number scored), which is what the pretraining was asked to learn. Each figure twice: with
the backbone's BatchNorm statistics as it holds them (``ssl``, ``random``, ...: random weights' are BatchNorm's
defaults, mean 0 and variance 1, so their features are a network's that never normalises) and recomputed from
the fitted films (``*_bn``: ``recalibrate``, the normalisation fine-tuning's first steps give the backbone, for
every set of weights alike). Prints one JSON line per fold. Results: docs/training.md.

    .venv/bin/python scripts/transfer_probe.py STUDY ARCH [FOLD ...]
    .venv/bin/python scripts/transfer_probe.py transfer128 efficientnet-lite0 0 1 2
    .venv/bin/python scripts/transfer_probe.py --build DATA CHECKPOINT [SEED ...]   # any pretraining of a build

With ``--build``: the checkpoint of ``covidnet pretrain --data DATA``, fitted on the build's training split and
scored on its validation and test splits, against random weights drawn from each seed.
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.preprocessing import StandardScaler

from covidnet.augment import augment, sample_params
from covidnet.contract import uint8_to_unit
from covidnet.data.store import open_store
from covidnet.models import create_model, get_spec
from covidnet.runtime import load
from covidnet.train import TrainConfig

PAIRS = 3  # pairs of views of the scored films; the figure is their mean


def views_of(store, rows, options: dict | None = None, seed: int = 1234) -> list:
    """``2 * PAIRS`` views (uint8, as stored) of the films ``rows``, drawn as ``covidnet pretrain`` draws its
    views (its defaults, or ``options``), from a fixed seed."""
    cfg = TrainConfig(data=str(store.root), out="-", task="self-supervised", **(options or {}))
    cfg.check()
    unit, g = uint8_to_unit(torch.from_numpy(store.read(rows))), torch.Generator().manual_seed(seed)
    views = [augment(unit, sample_params(len(unit), cfg.augment, g)) for _ in range(2 * PAIRS)]
    return [(v.clamp(0, 1) * 255).round().to(torch.uint8)[:, 0].numpy() for v in views]


def retrieval(lm, views: list) -> float:
    """The share of films whose first view's nearest neighbour among all the films' second views is its own
    (cosine, on features standardised over both views), averaged over the pairs of ``views``."""
    hits = []
    for a, b in zip(views[::2], views[1::2]):
        a, b = lm.features(a), lm.features(b)
        both = np.concatenate([a, b])
        a, b = ((f - both.mean(0)) / (both.std(0) + 1e-6) for f in (a, b))
        a, b = (f / np.linalg.norm(f, axis=1, keepdims=True) for f in (a, b))
        hits.append(float((np.argmax(a @ b.T, axis=1) == np.arange(len(a))).mean()))
    return round(float(np.mean(hits)), 3)


def recalibrate(lm, store, rows) -> None:
    """``lm``'s BatchNorm running statistics recomputed from the unaugmented films ``rows`` (a cumulative average
    over all of them: torch's ``swa_utils.update_bn``, as ``covidnet train --precise-bn`` uses it)."""
    from torch.optim.swa_utils import update_bn

    def batches():
        for k in range(0, len(rows), 64):
            unit = uint8_to_unit(torch.from_numpy(lm.contract.standardise(store.read(rows[k : k + 64]))))
            yield lm.contract.model_input(unit, lm.memory_format)

    with torch.no_grad():
        update_bn(batches(), lm.model)


def readings(lm, store, fit, scored, views: list, name: str) -> dict:
    """The probe and view retrieval of ``lm``'s weights under ``name``, with its BatchNorm statistics as they are
    and then (``name_bn``) recomputed from the fitted films, which leaves ``lm`` holding the recomputed ones."""
    out = {name: probe(lm, store, fit, scored), f"{name}_retrieval": retrieval(lm, views)}
    recalibrate(lm, store, fit)
    return out | {f"{name}_bn": probe(lm, store, fit, scored), f"{name}_bn_retrieval": retrieval(lm, views)}


def probe(lm, store, fit, scored) -> float:
    """Balanced accuracy on ``scored`` of a logistic regression on ``lm``'s frozen features of ``fit``."""
    return fitted_probe(lm.features(store, fit), lm.features(store, scored), store.labels(fit), store.labels(scored))


def fitted_probe(a, b, labels_a, labels_b) -> float:
    """Balanced accuracy on features ``b`` of a logistic regression fitted on standardised features ``a``."""
    scale = StandardScaler().fit(a)
    clf = LogisticRegression(max_iter=5000, C=0.1, class_weight="balanced").fit(scale.transform(a), labels_a)
    return round(float(balanced_accuracy_score(labels_b, clf.predict(scale.transform(b)))), 3)


def histogram_probe(store, fit, scored, contract=None) -> float:
    """The same probe on each film's first-order statistics alone (16 quantiles of its grey levels, their mean and
    standard deviation, after ``contract``'s intensity standardisation, the store's by default): what a backbone
    can read with no structure at all, the floor a structural feature must clear."""

    def stats(rows):
        x = (contract or store.contract).standardise(store.read(rows)).reshape(len(rows), -1).astype(np.float32)
        return np.c_[np.quantile(x, np.linspace(0.02, 0.98, 16), axis=1).T, x.mean(1), x.std(1)]

    return fitted_probe(stats(fit), stats(scored), store.labels(fit), store.labels(scored))


def compare(lm, store, fit, scored, arch: str, seed: int, views: list) -> dict:
    """The probe and view retrieval of ``lm``'s weights, then of the same architecture's random weights (drawn
    from ``seed``: ``random_weights``) and, where it has them, its ImageNet weights. Leaves ``lm`` holding other
    weights than its own."""
    out = {"fit": len(fit), "scored": len(scored), "histogram": histogram_probe(store, fit, scored, lm.contract)}
    out.update(readings(lm, store, fit, scored, views, "ssl"))
    out.update(random_weights(lm, store, fit, scored, arch, seed, views))
    if get_spec(arch).imagenet is not None:
        model = create_model(arch, num_classes=2, in_channels=lm.contract.in_channels)
        get_spec(arch).imagenet(model)
        lm.model.load_state_dict(model.state_dict())
        out.update(readings(lm, store, fit, scored, views, "imagenet"))
    return out


def random_weights(lm, store, fit, scored, arch: str, seed: int, views: list, name: str = "random") -> dict:
    """The probe and view retrieval of the architecture's random weights drawn from ``seed``, loaded into ``lm``,
    under ``name``."""
    torch.manual_seed(seed)
    lm.model.load_state_dict(create_model(arch, num_classes=2, in_channels=lm.contract.in_channels).state_dict())
    return readings(lm, store, fit, scored, views, name)


def main(study, arch, *folds):
    study = Path(study)
    for k in [int(f) for f in folds]:
        ckpt = study / "pretrain" / arch / f"fold{k}" / "best.pt"
        if json.loads((ckpt.parent / "run.json").read_text(encoding="utf-8"))["state"] != "complete":
            print(f"{ckpt.parent}: pretraining not complete, fold {k} skipped", file=sys.stderr)
            continue
        store, lm = open_store(study / "folds" / f"fold{k}"), load(ckpt, "cpu")
        fit, scored = store.rows("train"), store.rows("test")
        out = compare(lm, store, fit, scored, arch, k, views_of(store, scored))
        print(json.dumps({"fold": k, "arch": arch, **out}), flush=True)


def main_build(data, checkpoint, *seeds):
    """A pretraining of a build (``covidnet pretrain --data DATA``): fitted on its training split, scored on its
    validation and test splits; random weights drawn from each seed (default 0)."""
    store, lm = open_store(data), load(Path(checkpoint), "cpu")
    fit, scored = store.rows("train"), np.concatenate([store.rows("val"), store.rows("test")])
    views, arch = views_of(store, scored), lm.arch
    seeds = [int(s) for s in seeds] or [0]
    out = compare(lm, store, fit, scored, arch, seeds[0], views)  # the pretraining's and ImageNet's figures once
    for seed in seeds:
        if seed != seeds[0]:
            out.update(random_weights(lm, store, fit, scored, arch, seed, views))
        print(json.dumps({"checkpoint": checkpoint, "arch": arch, "random_seed": seed, **out}), flush=True)


if __name__ == "__main__":
    main_build(*sys.argv[2:]) if sys.argv[1:2] == ["--build"] else main(*sys.argv[1:])
