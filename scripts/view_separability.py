"""Can a network tell a build's films apart under the pretraining views? (issue: does pretraining help?)

Self-supervised pretraining teaches a backbone to match two views of a film and (for a contrastive method) to
tell them from other films' views. If two views of one film differ more than two films do, no objective can
learn that in a short run, and a backbone pretrained on such views keeps less of the films than random weights.
This trains a backbone from scratch with lightly's NT-Xent loss (SimCLR's: each view against the other
2B - 2 views of its batch; chance is ln(2B - 1)) on the training split, for a few steps, twice: with the views
of ``covidnet pretrain`` (its defaults, or the options given), and with two identical copies of each film (the
reference: what the network learns when nothing is to be made invariant). Prints one JSON line: the loss every
25 steps of each, and chance. Results: docs/training.md.

    .venv/bin/python scripts/view_separability.py DATA ARCH STEPS BATCH LR SEED [OPTIONS_JSON]
    .venv/bin/python scripts/view_separability.py ds efficientnet-lite0 150 16 1e-3 0
    .venv/bin/python scripts/view_separability.py ds efficientnet-lite0 150 16 1e-3 0 '{"rotate": 0, "zoom_max": 1}'

The contrastive loss is here as a measuring instrument only; ``covidnet pretrain`` trains SimSiam.
"""

import json
import math
import sys

import numpy as np
import torch
from lightly.loss import NTXentLoss

from covidnet.augment import augment, sample_params
from covidnet.contract import uint8_to_unit
from covidnet.data.store import open_store
from covidnet.models import create_model
from covidnet.tasks.simsiam import ProjectionHead
from covidnet.train import TrainConfig

EVERY = 25


def curve(store, contract, views, arch, steps, batch, lr, seed, identical):
    """The NT-Xent loss, averaged over each ``EVERY`` steps, of a backbone trained from random weights."""
    torch.manual_seed(seed)
    backbone = create_model(arch, num_classes=2, in_channels=contract.in_channels)
    head = ProjectionHead(backbone.num_features)
    params = [*backbone.parameters(), *head.parameters()]
    opt, loss_fn = torch.optim.Adam(params, lr=lr), NTXentLoss(temperature=0.2)
    rows, g = store.rows("train"), torch.Generator().manual_seed(seed)
    backbone.train(), head.train()
    losses, out = [], []
    for step in range(1, steps + 1):
        pick = np.sort(rows[torch.randperm(len(rows), generator=g)[:batch].numpy()])
        x = uint8_to_unit(torch.from_numpy(store.read(pick)))
        v1 = augment(x, sample_params(len(x), views, g))
        v2 = v1.clone() if identical else augment(x, sample_params(len(x), views, g))
        z1, z2 = (head(backbone.forward_features(contract.model_input(v)).float().mean((2, 3))) for v in (v1, v2))
        loss = loss_fn(z1, z2)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step % EVERY == 0:
            out.append(round(float(np.mean(losses[-EVERY:])), 3))
    return out


def main(data, arch, steps, batch, lr, seed, options="{}"):
    steps, batch, lr, seed = int(steps), int(batch), float(lr), int(seed)
    store = open_store(data)
    cfg = TrainConfig(data=data, out="-", task="self-supervised", arch=arch, **json.loads(options))
    task = cfg.check()
    contract = task.contract(store, cfg)
    result = {"data": data, "arch": arch, "options": json.loads(options), "batch": batch, "lr": lr, "seed": seed}
    result["chance"] = round(math.log(2 * batch - 1), 3)
    for name, identical in (("views", False), ("identical", True)):
        result[name] = curve(store, contract, cfg.augment, arch, steps, batch, lr, seed, identical)
    print(json.dumps(result))


if __name__ == "__main__":
    main(*sys.argv[1:])
