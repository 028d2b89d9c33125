"""The pretraining known answer on phantoms (issue: does pretraining help?), one seed at a time: a linear probe
(``transfer_probe.probe``: scikit-learn's logistic regression on standardised features, classes weighted to balance;
before 2026-12-07 unweighted) on the frozen pooled features of a backbone after `covidnet pretrain` (SimSiam, or
OPTIONS_JSON's ``ssl_method``) on the phantoms' training split, against the same probe on the same architecture's
random weights, and on two controls pretrained alike on the same images with their pixels shuffled: within each image
(``noise``: each keeps its histogram) and across the set (``pooled``: none keeps anything of its class). Trained on
the training split's labels, scored (balanced accuracy) on the validation and test splits. Also, for each backbone,
how often one view of a scored image (the pretraining's views, three pairs of draws) finds the image's other view
nearest among all the scored images' other views (``*_retrieval``; chance 1 / the number scored): what a backbone
keeps of a film's identity through the views it was taught to ignore. Each figure also with the backbone's BatchNorm
statistics recomputed from the training split's images (``*_bn``: ``transfer_probe.readings``). Prints one JSON line.
Results: docs/training.md.

    .venv/bin/python scripts/pretrain_probe.py WORK SEED ARCH EPOCHS N SIZE BATCH LR [OPTIONS_JSON [DRAWS [JOBS]]]
    .venv/bin/python scripts/pretrain_probe.py /tmp/probe 0 efficientnet-lite0 40 300 32 16 1e-3
    .venv/bin/python scripts/pretrain_probe.py /tmp/probe 1 efficientnet-lite0 40 300 64 32 1e-3 \
        '{"ssl_method": "simclr"}' 5

``DRAWS``: how many sets of random weights to read (``random``, ``random1``, ...; default 1), the first drawn from
``SEED``, the k-th from SEED + 1000 k, since one draw's probe moves by 0.1 from another's. ``JOBS``: how many of
the three pretrainings (on the images and on the two controls) run at once, each in its own process at one
thread (default 1: one after another, in this process, at its thread count); a pretraining at one thread gives the
same weights in either case.
"""

import csv
import hashlib
import json
import multiprocessing
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from phantomdata import make_dataset  # noqa: E402
from transfer_probe import histogram_probe, random_weights, readings, views_of  # noqa: E402  (this folder, first on the path)

from covidnet.data.store import open_store  # noqa: E402
from covidnet.runtime import load  # noqa: E402
from covidnet.train import TrainConfig, train  # noqa: E402


def shuffled_copy(ds: Path, out: Path, seed: int, across_set: bool = False) -> Path:
    """The dataset with every image's pixels permuted: within each image (its histogram kept, its structure gone),
    or ``across_set``, across all its images (noise images that each draw their grey levels from the whole set's,
    so that no image's histogram, nor anything else in it, tells its class)."""
    if not out.exists():
        shutil.copytree(ds, out, symlinks=False)
        images = np.load(out / "images.npy")
        flat, g = images.reshape(1 if across_set else len(images), -1), np.random.default_rng(seed)
        for k in range(len(flat)):
            flat[k] = flat[k][g.permutation(flat.shape[1])]
        np.save(out / "images.npy", images)
    return out


def pretrain(configs: list[TrainConfig], jobs: int) -> None:
    """Run the pretrainings: in this process, one after another, or ``jobs`` at once, each in a fresh process
    (spawned: no forked torch state) at one thread."""
    if jobs <= 1:
        for cfg in configs:
            train(cfg)
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=torch.set_num_threads, initargs=(1,)) as pool:
        for done in [pool.submit(train, cfg) for cfg in configs]:
            done.result()


def main(work, seed, arch, epochs, n, size, batch, lr, options="{}", draws="1", jobs="1"):
    seed, epochs, n, size, batch, lr = int(seed), int(epochs), int(n), int(size), int(batch), float(lr)
    base = Path(work) / f"{arch}-n{n}-s{seed}-{size}px"
    ds = base / "ds" if (base / "ds").exists() else make_dataset(base, n=n, size=size, seed=seed)
    store = open_store(ds)
    tag = "" if options == "{}" else "-" + hashlib.sha1(options.encode()).hexdigest()[:8]  # other views
    settings = dict(epochs=epochs, batch_size=batch, lr=lr, seed=seed, progress=False, device="cpu")
    data = {"ssl": ds, "noise": shuffled_copy(ds, base / "noise", seed)}
    data["pooled"] = shuffled_copy(ds, base / "pooled", seed, across_set=True)
    runs = {name: base / f"{name}-e{epochs}-b{batch}-lr{lr:g}{tag}" for name in data}
    pretrain([TrainConfig(data=str(data[name]), out=str(out), task="self-supervised", arch=arch, **settings,
                          **json.loads(options))
              for name, out in runs.items() if not (out / "best.pt").exists()], int(jobs))  # fmt: skip

    train_rows = store.rows("train")
    scored = np.concatenate([store.rows("val"), store.rows("test")])

    views = views_of(store, scored, json.loads(options))

    ssl = load(runs["ssl"] / "best.pt", "cpu")
    result = {"seed": seed, "arch": arch, "epochs": epochs, "size": size, "train": len(train_rows)}
    result["scored"] = len(scored)
    result["histogram"] = histogram_probe(store, train_rows, scored, ssl.contract)
    result.update(readings(ssl, store, train_rows, scored, views, "ssl"))
    for k in range(int(draws)):  # random weights: the first drawn from ``seed``, the others from seed + 1000 k
        result.update(random_weights(ssl, store, train_rows, scored, arch, seed + 1000 * k, views, f"random{k or ''}"))
    for name in ("noise", "pooled"):
        result.update(readings(load(runs[name] / "best.pt", "cpu"), store, train_rows, scored, views, name))
    log = (runs["ssl"] / "log.csv").read_text(encoding="utf-8").splitlines()
    result["ssl_val_z_std"] = round(float(list(csv.DictReader(log))[-1]["val_z_std"]), 4)
    print(json.dumps(result))


if __name__ == "__main__":
    main(*sys.argv[1:])
