"""Can a network tell a build's films apart under the pretraining views? (issue: does pretraining help?)

Self-supervised pretraining teaches a backbone to match two views of a film and (for a contrastive method) to
tell them from other films' views. If two views of one film differ more than two films do, no objective can
learn that in a short run, and a backbone pretrained on such views keeps less of the films than random weights.
This trains a backbone from scratch with lightly's NT-Xent loss (SimCLR's: each view against the other
2B - 2 views of its batch; chance is ln(2B - 1)) on the training split, for a few steps, twice: with the views
of ``covidnet pretrain`` (its defaults, or the options given), and with two identical copies of each film (the
reference: what the network learns when nothing is to be made invariant). Prints one JSON line: the loss every
25 steps of each, and chance. Results: docs/training.md.

    .venv/bin/python scripts/view_separability.py DATA ARCH STEPS BATCH LR SEED [OPTIONS_JSON [LOSS]]
    .venv/bin/python scripts/view_separability.py ds efficientnet-lite0 150 16 1e-3 0
    .venv/bin/python scripts/view_separability.py ds efficientnet-lite0 150 16 1e-3 0 '{"rotate": 0, "zoom_max": 1}'
    .venv/bin/python scripts/view_separability.py ds efficientnet-lite0 200 8 3e-4 0 '{}' moco

LOSS ``ntxent`` (the default) is the instrument above; ``moco`` trains ``covidnet pretrain --ssl-method moco``'s
own network instead (``covidnet.tasks.moco``: key encoder, queue, InfoNCE; chance ln(queue + 1)), stepped as the
task steps it, to ask whether that method learns even identical views in a short run.
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
from covidnet.tasks import moco
from covidnet.tasks.selfsup import SelfSupervisedTask
from covidnet.tasks.simsiam import ProjectionHead
from covidnet.train import TrainConfig

EVERY = 25


def curve(store, contract, views, arch, steps, batch, lr, seed, identical, loss_name="ntxent"):
    """The loss (NT-Xent, or MoCo's InfoNCE), averaged over each ``EVERY`` steps, of a backbone trained from
    random weights."""
    torch.manual_seed(seed)
    backbone = create_model(arch, num_classes=2, in_channels=contract.in_channels)
    if loss_name == "moco":  # the task's own network and step: the key encoder follows, the keys are queued
        task = SelfSupervisedTask("moco")
        net, params = task.trainable(backbone)
    else:
        net, head, loss_fn = backbone, ProjectionHead(backbone.num_features), NTXentLoss(temperature=0.2)
        params = [*backbone.parameters(), *head.parameters()]
        head.train()
    opt = torch.optim.Adam(params, lr=lr)
    rows, g = store.rows("train"), torch.Generator().manual_seed(seed)
    net.train()
    losses, out = [], []
    for step in range(1, steps + 1):
        pick = np.sort(rows[torch.randperm(len(rows), generator=g)[:batch].numpy()])
        x = uint8_to_unit(torch.from_numpy(store.read(pick)))
        v1 = augment(x, sample_params(len(x), views, g))
        v2 = v1.clone() if identical else augment(x, sample_params(len(x), views, g))
        if loss_name == "moco":
            loss, _ = task.step(net, {"x1": contract.model_input(v1), "x2": contract.model_input(v2)})
        else:
            z1, z2 = (head(backbone.forward_features(contract.model_input(v)).float().mean((2, 3))) for v in (v1, v2))
            loss = loss_fn(z1, z2)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step % EVERY == 0:
            out.append(round(float(np.mean(losses[-EVERY:])), 3))
    return out


def main(data, arch, steps, batch, lr, seed, options="{}", loss_name="ntxent"):
    steps, batch, lr, seed = int(steps), int(batch), float(lr), int(seed)
    store = open_store(data)
    cfg = TrainConfig(data=data, out="-", task="self-supervised", arch=arch, **json.loads(options))
    task = cfg.check()
    contract = task.contract(store, cfg)
    if loss_name not in ("ntxent", "moco"):
        raise SystemExit(f"view_separability.py: LOSS must be ntxent or moco, not {loss_name!r}")
    result = {"data": data, "arch": arch, "options": json.loads(options), "batch": batch, "lr": lr, "seed": seed}
    result["loss"] = loss_name
    result["chance"] = round(math.log(moco.QUEUE + 1 if loss_name == "moco" else 2 * batch - 1), 3)
    for name, identical in (("views", False), ("identical", True)):
        result[name] = curve(store, contract, cfg.augment, arch, steps, batch, lr, seed, identical, loss_name)
    print(json.dumps(result))


if __name__ == "__main__":
    main(*sys.argv[1:])
