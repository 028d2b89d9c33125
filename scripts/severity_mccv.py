"""COVIDNet-S the published way, on a frozen classifier: patient-grouped Monte Carlo cross-validation of
a severity head trained on the frozen features of a classification checkpoint.

COVIDNet-S (Wong et al. 2020) fed the features of a frozen COVID-Net to a small head and reported R²
as mean ± sd over stratified Monte Carlo cross-validation. This script does the same on a dataset
built with ``covidnet data build --severity``: every image with scores (whatever split the build gave
it) is pooled, and ``--splits`` times its **patients** are drawn into train (80 %) and test (20 %).
The backbone's feature maps are computed once (frozen: no augmentation, BatchNorm in eval mode); on
each split two heads, fixed in advance, are fitted on train and scored on test:

* ``ridge``: ridge regression on the globally pooled features (standardised; alpha chosen by 5-fold
  patient-grouped cross-validation inside the training patients only), clipped to 0-8;
* ``head``: the checkpoint's own head (pooling and hidden layers, initialised from it) with a fresh
  2-output layer, trained with ``covidnet train --task severity``'s loss (8·sigmoid, fractional
  logit) for ``--head-epochs`` epochs: what ``--freeze-backbone`` trains, without augmentation.

Metrics per split are ``covidnet.metrics.regression.severity_point_metrics`` (scikit-learn, scipy); the JSON
holds every split and mean ± sd. Run from the repository root::

    .venv/bin/python scripts/severity_mccv.py --checkpoint RUN/best.pt --data SEVERITY_BUILD \\
        --out docs/results/severity_mccv.json
"""

from __future__ import annotations

import argparse
import copy
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from covidnet import __version__
from covidnet.contract import uint8_to_unit
from covidnet.data.severity import SCORES
from covidnet.data.store import open_store
from covidnet.files import write_json
from covidnet.metrics.regression import severity_point_metrics
from covidnet.runtime import load
from covidnet.tasks import SeverityTask

PUBLISHED = {
    "source": "Wong et al., COVIDNet-S (2020): 396 CXRs, stratified Monte Carlo cross-validation",
    "geographic": {"r2_mean": 0.664, "r2_sd": 0.032, "r2_best_single_network": 0.739},
    "opacity": {"r2_mean": 0.635, "r2_sd": 0.044, "r2_best_single_network": 0.741},
}


@torch.no_grad()
def feature_maps(model, store, rows, contract, batch=32) -> torch.Tensor:
    out = []
    for k in range(0, len(rows), batch):
        x = uint8_to_unit(torch.from_numpy(np.ascontiguousarray(store.images[rows[k : k + batch]])))
        out.append(model.forward_features(contract.model_input(x)).float())
    return torch.cat(out)


def fit_ridge(x_train, y_train, groups, x_test, seed):
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import GridSearchCV, GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    search = GridSearchCV(
        make_pipeline(StandardScaler(), Ridge()),
        {"ridge__alpha": np.logspace(-1, 5, 13)},
        cv=GroupKFold(5),
        scoring="r2",
    )
    search.fit(x_train, y_train, groups=groups)
    return np.clip(search.predict(x_test), 0, 8), float(search.best_params_["ridge__alpha"])


def fit_head(model, f_train, y_train, f_test, epochs, seed):
    task = SeverityTask()
    torch.manual_seed(seed)
    head = copy.deepcopy(model.head).train()
    last = torch.nn.Linear(model.classifier.in_features, len(SCORES))
    torch.nn.init.trunc_normal_(last.weight, std=0.01)
    torch.nn.init.zeros_(last.bias)
    net = torch.nn.Sequential(head, last)
    opt = torch.optim.Adam(net.parameters(), lr=3e-4, weight_decay=1e-4)
    y = torch.as_tensor(y_train)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=gen).split(16):
            loss = task.loss(net(f_train[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        return task.decode(net(f_test))


def summarise(per_split: list[dict]) -> dict:
    """Mean and sample sd over the splits of each metric (None where it is undefined, e.g. the
    Spearman correlation of a constant prediction)."""
    out = {}
    for k in per_split[0]:
        v = np.array([s[k] for s in per_split], dtype=float)
        v = v[~np.isnan(v)]
        out[k] = {"mean": float(v.mean()) if len(v) else None, "sd": float(v.std(ddof=1)) if len(v) > 1 else None}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="a classification checkpoint (the frozen backbone)")
    p.add_argument("--data", required=True, help="a dataset built with --severity at the checkpoint's stored size")
    p.add_argument("--splits", type=int, default=20, help="Monte Carlo splits (default 20)")
    p.add_argument(
        "--test-fraction", type=float, default=0.2, help="share of patients in each test split (default 0.2)"
    )
    p.add_argument("--head-epochs", type=int, default=60, help="epochs of the trained head per split (default 60)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="JSON file to write")
    args = p.parse_args(argv)

    from sklearn.model_selection import GroupShuffleSplit

    t0 = time.perf_counter()
    lm = load(args.checkpoint, "cpu")
    model, meta = lm.model, lm.meta
    store = open_store(args.data)
    lm.check_store(store, args.data)
    task = SeverityTask()
    rows = np.concatenate([task.rows(store, s) for s in ("train", "val", "test")])
    y = task.targets(store, rows)
    groups = np.array(store.patients(rows))
    fmap = feature_maps(model, store, rows, lm.contract)
    pooled = fmap.mean((2, 3)).numpy()
    t_features = time.perf_counter() - t0
    print(
        f"{len(rows)} scored images of {len(set(groups))} patients; features {tuple(fmap.shape[1:])} "
        f"in {t_features:.0f} s",
        file=sys.stderr,
    )

    splitter = GroupShuffleSplit(n_splits=args.splits, test_size=args.test_fraction, random_state=args.seed)
    results = {"ridge": [], "head": [], "train_mean": []}
    alphas = []
    for k, (tr, te) in enumerate(splitter.split(pooled, y, groups)):
        pred, alpha = fit_ridge(pooled[tr], y[tr], groups[tr], pooled[te], args.seed + k)
        alphas.append(alpha)
        results["ridge"].append(severity_point_metrics(y[te], pred))
        results["head"].append(
            severity_point_metrics(y[te], fit_head(model, fmap[tr], y[tr], fmap[te], args.head_epochs, args.seed + k))
        )
        results["train_mean"].append(severity_point_metrics(y[te], np.broadcast_to(y[tr].mean(0), y[te].shape).copy()))
        print(
            f"split {k + 1}/{args.splits}: "
            + "  ".join(
                f"{h} R² {results[h][-1]['geographic.r2']:.3f}/{results[h][-1]['opacity.r2']:.3f}"
                for h in ("ridge", "head")
            ),
            file=sys.stderr,
        )
    out = {
        "what": "COVIDNet-S protocol on a frozen classifier: patient-grouped Monte Carlo cross-validation",
        "checkpoint": args.checkpoint,
        "arch": meta["arch"],
        "input_size": lm.contract.input_size,
        "classifier_val_metrics": {k: meta.get("val_metrics", {}).get(k) for k in ("accuracy", "loss")},
        "data": args.data,
        "n_images": int(len(rows)),
        "n_patients": int(len(set(groups))),
        "splits": args.splits,
        "test_fraction": args.test_fraction,
        "unit": "patient",
        "seed": args.seed,
        "heads": {
            "ridge": "ridge on pooled features, alpha by 5-fold grouped CV on train",
            "head": (
                f"checkpoint head + 2 outputs, fractional-logit loss, Adam 3e-4, {args.head_epochs} epochs, batch 16"
            ),
            "train_mean": "baseline: the training mean",
        },
        "ridge_alphas": alphas,
        "summary": {h: summarise(v) for h, v in results.items()},
        "per_split": results,
        "published": PUBLISHED,
        "device": "cpu",
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "covidnet": __version__,
        "seconds": round(time.perf_counter() - t0, 1),
        "date": time.strftime("%Y-%m-%d"),
    }
    write_json(Path(args.out), out)

    def pm(d: dict, digits: int = 3) -> str:
        return "—" if d["mean"] is None else f"{d['mean']:.{digits}f} ± {d['sd'] or 0:.{digits}f}"

    for h in ("ridge", "head", "train_mean"):
        s = out["summary"][h]
        print(
            f"{h:10s} "
            + "  ".join(
                f"{sc}: R² {pm(s[f'{sc}.r2'])}, MAE {pm(s[f'{sc}.mae'], 2)}, Spearman {pm(s[f'{sc}.spearman'])}"
                for sc in SCORES
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
