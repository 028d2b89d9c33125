"""Out-of-fold studies (``covidnet study ... --folds K``): every image of the dataset scored by a model that
never saw its patient, so that a figure rests on every image rather than on one test split.

The dataset's images, whatever split the build gave them, are dealt into ``K`` folds by patient (every image
of a patient in one fold), stratified by class and site (scikit-learn's ``StratifiedGroupKFold``; the site is
the index's ``site`` where the build knows it, else the source), with a fixed seed, so every arm and every
seed of a study sees the same folds. For fold ``k`` a derived dataset (``Store.derive``: the same images,
linked, with another split column) holds fold ``k`` as its test split; its validation split is drawn from the
other folds, again by patient and stratified (a share ``VAL_SHARE``), never from the fold it scores; the rest
is its training split. Each fold's model is trained on its training split, selected on its validation split
and scores its test split: per seed, one prediction for every image of the dataset.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import numpy as np

from ..errors import ConfigError

FOLD_SEED = 0  # the folds are the study's, not a run's: every arm and seed sees the same ones
VAL_SHARE = 0.125  # of the training folds' images, by patient, for model selection


def strata(store, rows: np.ndarray) -> np.ndarray:
    """Each row's stratum: its class and its site (the source where the site is unknown)."""
    out = []
    for r in rows:
        row = store.index[r]
        out.append(f"{row['label']}|{row.get('site') or row['source']}")
    return np.array(out)


def check_folds(store, k: int, where: str) -> None:
    """``--folds k`` must be at least 2 and at most the number of patients of the rarest class; one line
    otherwise, before any training."""
    if k < 2:
        raise ConfigError(f"--folds {k}: give at least 2 (or 0: evaluate on the build's own split)")
    rows = store.rows()
    patients, labels = np.array(store.patients(rows)), np.array([store.index[r]["label"] for r in rows])
    per_class = {c: len(set(patients[labels == c])) for c in sorted(set(labels))}
    rarest = min(per_class, key=per_class.get)
    if k > per_class[rarest]:
        raise ConfigError(
            f"--folds {k}: {where} has {per_class[rarest]} patients of {rarest}, fewer than the folds; every fold "
            f"needs one (give --folds {per_class[rarest]} or fewer)"
        )


def assign_folds(store, k: int, seed: int = FOLD_SEED) -> np.ndarray:
    """Each row's fold (0 .. k-1), by patient, stratified by class and site."""
    from sklearn.model_selection import StratifiedGroupKFold

    rows = store.rows()
    fold = np.empty(len(rows), dtype=np.int64)
    split = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    with _few_members_expected():
        for f, (_, test) in enumerate(split.split(rows, strata(store, rows), np.array(store.patients(rows)))):
            fold[test] = f
    return fold


@contextlib.contextmanager
def _few_members_expected():
    """scikit-learn warns when a stratum has fewer members than folds; with sites among the strata most do (a
    site that sent one film): the strata are balanced as far as they go, which is what is meant."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class in y has only", category=UserWarning)
        yield


def fold_splits(store, fold: np.ndarray, k: int, seed: int = FOLD_SEED) -> list[str]:
    """The split column of fold ``k``'s derived dataset: "test" for the fold's rows, "val" for a share of the
    others' patients (``VAL_SHARE``, stratified), "train" for the rest."""
    from sklearn.model_selection import StratifiedGroupKFold

    rows = store.rows()
    splits = np.where(fold == k, "test", "train").astype(object)
    rest = np.flatnonzero(fold != k)
    inner = StratifiedGroupKFold(n_splits=round(1 / VAL_SHARE), shuffle=True, random_state=seed + 1 + k)
    with _few_members_expected():
        _, val = next(inner.split(rest, strata(store, rows[rest]), np.array(store.patients(rows[rest]))))
    splits[rest[val]] = "val"
    return splits.tolist()


def fold_datasets(store, k: int, folder: Path) -> list[Path]:
    """The ``k`` derived datasets in ``folder/foldN`` (made once; a resumed study finds them, and refuses them
    if their splits are not the ones this dataset's folds give)."""
    from ..data.store import open_store

    fold = assign_folds(store, k)
    out = []
    for f in range(k):
        path = Path(folder) / f"fold{f}"
        splits = fold_splits(store, fold, f)
        if (path / "index.csv").is_file():
            have = [r["split"] for r in open_store(path).index]
            if have != splits:
                raise ConfigError(
                    f"{path}: its splits are not this dataset's fold {f}; remove the folder or use another --out"
                )
        else:
            store.derive(path, splits)
        out.append(path)
    return out
