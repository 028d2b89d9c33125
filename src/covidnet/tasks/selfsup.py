"""Self-supervised pretraining on unlabelled chest radiographs (``covidnet pretrain``, ``covidnet train --task
self-supervised``): SimSiam (``tasks/simsiam.py``, the default), MoCo v2 (``tasks/moco.py``, ``--ssl-method
moco``) or SimCLR (``tasks/simclr.py``, ``--ssl-method simclr``) on a registered classifier's backbone, by the
one training loop (resumable, SIGTERM-safe, torchrun, streamed from a store larger than memory). The task knows
a method only through its network class (``network_class``): another method is a module with that interface
and an entry in ``METHODS``.

* **Data**: the images of a build's **training split only**, labelled or not, never its validation or test
  split; and with ``--images DIR`` the films of those folders, staged beside them in ``RUN/films/`` by
  ``data.films`` (through the build's contract, duplicates of the build's films left out). A tenth of the
  patients (chosen by a hash of the patient, the same every run) is held out to watch the loss on images the
  step never saw (``val_loss``, the figure a run is selected on).
* **Views**: two augmentations of each image on the device, each with its own parameters, of what a chest
  film varies in: a crop of 44-100 % of the image's area (``--zoom-min 1 --zoom-max 1.5``), a shift of up to a
  tenth of the side, a rotation of up to 10 degrees, brightness ±20 %, a gamma curve, blur and noise
  (acquisition). No colour jitter or greyscale conversion (the films are grey), and **no horizontal flip**
  (``--hflip 0``): the heart's side and the laterality markers are part of a radiograph's anatomy, and a view
  invariant to them would teach the backbone to ignore which side is which.
* **Checkpoint**: the backbone's weights under ``model`` with its ``arch`` and ``arch_args`` (so ``covidnet
  train --init CKPT`` takes it for the same ``--arch``, its head starting afresh), the heads under
  ``ssl_heads`` (for ``--resume``; MoCo's key encoder and queue with them), ``task`` "self-supervised" and
  ``method`` ("simsiam", "moco" or "simclr").
"""

from __future__ import annotations

import hashlib
import importlib

import numpy as np

from ..errors import ConfigError, UsageError
from .base import Task

# a method's name: its network class, in the module of that name
METHODS = {"simsiam": "SimSiam", "moco": "MoCo", "simclr": "SimCLR"}
MONITOR_SHARE = 10  # one patient in this many is held out of the training split to watch the loss


def network_class(name: str):
    """The network class of a method (``simsiam.SimSiam``, ``moco.MoCo``, ``simclr.SimCLR``): ``(backbone,
    heads)`` -> a module whose forward takes two views and returns (loss, spread, anything the method keeps
    after the step), with ``create_heads(backbone, num_features)``, ``before_step()``, ``after_step(extra,
    gather)``, ``title`` and ``settings()``. Imported when asked for, so that the CLI reads ``METHODS``
    without PyTorch."""
    if name not in METHODS:
        raise ConfigError(f"--ssl-method must be one of {', '.join(METHODS)}, not {name!r}")
    return getattr(importlib.import_module(f".{name}", __package__), METHODS[name])


def monitored(patient: str) -> bool:
    """Whether a training patient is held out to watch the loss (a hash, so the same in every run)."""
    return int(hashlib.sha1(patient.encode()).hexdigest(), 16) % MONITOR_SHARE == 0


class SelfSupervisedTask(Task):
    name = "self-supervised"
    kind = "classifier"  # the backbone: any registered classifier
    outputs: list[str] = []
    needs = "training images (labelled or not)"
    not_predicted = (
        "a self-supervised checkpoint predicts nothing: fine-tune it, covidnet train --init CKPT --arch ARCH"
    )
    title = "covidnet self-supervised pretraining"
    options = ("in_channels", "intensity", "aug_gamma", "aug_blur", "aug_noise", "images", "ssl_method")
    defaults = {
        "arch": "covidnet-cxr3b",
        "epochs": 30,
        "lr": 3e-4,
        "plateau_factor": 0.7,
        "translate": 0.10,
        "hflip": 0.0,
        "brightness": 0.2,
        "zoom_min": 1.0,
        "zoom_max": 1.5,
        "aug_gamma": 0.2,
        "aug_blur": 1.0,
        "aug_noise": 0.02,
        "eval_batch_size": 64,
        "precise_bn": 0,
    }

    def __init__(self, method: str = "simsiam"):
        self.method = method
        self.heads = None
        self.net = None  # the trained backbone with its heads, unwrapped (its before_step and after_step)
        self.dist = None  # the run's processes, whose outputs a method may gather after the step

    @classmethod
    def from_config(cls, cfg) -> SelfSupervisedTask:
        if cfg.augment.identity:
            raise ConfigError("self-supervised pretraining needs augmentation: two identical views teach nothing")
        if cfg.init != "random":
            raise ConfigError("--init: self-supervised pretraining starts from random weights")
        network_class(cfg.ssl_method)  # a clear error for an unknown one
        return cls(cfg.ssl_method)

    # --- data ---------------------------------------------------------------------------------------

    def rows(self, store, split):
        """The training split's rows: those of monitored patients for "val", the rest for "train"; no rows of
        any other split."""
        rows = store.rows("train")
        held = np.array([monitored(p) for p in store.patients(rows)], dtype=bool)
        return rows[held] if split == "val" else rows[~held] if split == "train" else rows[:0]

    def targets(self, store, rows):
        return None

    def contract(self, store, cfg):
        from ..models import get_spec

        mean, std = get_spec(cfg.arch).normalisation(cfg.in_channels)
        return store.contract.for_model(cfg.size or store.size, cfg.in_channels, mean, std, cfg.intensity)

    # --- the step -----------------------------------------------------------------------------------

    def setup(self, run) -> None:
        self.dist = run.dist

    def create_model(self, cfg, run):
        from ..models import create_model

        model = create_model(cfg.arch, num_classes=2, in_channels=cfg.in_channels)
        for p in [*model.head.parameters(), *model.get_classifier().parameters()]:
            p.requires_grad_(False)  # never trained (the methods read forward_features); under torchrun, DDP
        return model  # would otherwise wait for their gradients and stop at the second step

    def network(self, model):
        """The backbone with the method's heads: ``(x1, x2)`` -> (loss, spread, ...)."""
        return network_class(self.method)(model, self.heads)

    def trainable(self, model):
        if self.heads is None:
            heads = network_class(self.method).create_heads(model, model.num_features)
            self.heads = heads.to(next(model.parameters()).device)
        self.net = self.network(model)
        trained = [p for p in self.heads.parameters() if p.requires_grad]  # not MoCo's key encoder
        return self.net, [p for p in model.parameters() if p.requires_grad] + trained

    def batch(self, run, pos, params, hosts):
        """Two views of each image, each with its own augmentation (the second's drawn from the step's seeded
        generator, so a resumed run draws the same)."""
        import torch

        from ..augment import sample_params

        second = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,))))
        params2 = sample_params(len(pos), run.cfg.augment, second)
        return {"x1": run.input(pos, params, hosts["pixels"]), "x2": run.input(pos, params2, hosts["pixels"])}

    def step(self, net, batch):
        import torch

        def gather(t):  # every process's, in rank order (under torchrun)
            return torch.cat(self.dist.gather(t)) if self.dist else t

        self.net.before_step()
        loss, spread, *extra = net(batch["x1"], batch["x2"])
        self.net.after_step(extra, gather)
        return loss, {"z_std": spread * len(batch["x1"])}

    def forward(self, model, unit, contract, memory_format=None):
        """The backbone's pooled features (what a linear probe or ``LoadedModel.features`` reads)."""
        return model.forward_features(contract.model_input(unit, memory_format)).float().mean((2, 3))

    def validate(self, run, outputs):
        """The method's loss on the held-out patients' images, two views each drawn from a fixed seed (the same
        views every epoch), in eval mode; and the spread of their projections. MoCo's keys are not queued, so
        its figure is against the queue as training left it."""
        import torch

        from ..augment import sample_params

        net, cfg = self.network(run.model), run.cfg
        mine = run.val_pos[run.dist.rank :: run.dist.world]
        total = spread = 0.0
        was = net.training
        net.eval()
        with torch.no_grad(), run.amp:
            for k in range(0, len(mine), cfg.eval_batch_size):
                pos = mine[k : k + cfg.eval_batch_size]
                g = torch.Generator().manual_seed(int(np.random.SeedSequence([cfg.seed, k, 0x55]).generate_state(1)[0]))
                views = [run.input(pos, sample_params(len(pos), cfg.augment, g)) for _ in range(2)]
                loss, s, *_ = net(*views)
                total, spread = total + float(loss) * len(pos), spread + float(s) * len(pos)
        net.train(was)
        total, spread, n = run.dist.all_sum([total, spread, float(len(mine))], run.device)
        return {"loss": total / max(n, 1.0), "z_std": spread / max(n, 1.0)}

    def log(self, val):
        return {"val_z_std": val["z_std"]}, f"z std {val['z_std']:.3f}"

    def final(self, row):
        return f"val {network_class(self.method).title} loss {row['val_loss']:.4f} (z std {row['val_z_std']:.3f})"

    def state(self):
        return {"ssl_heads": self.heads.state_dict()} if self.heads is not None else {}

    def load_state(self, ckpt):
        self.heads.load_state_dict(ckpt["ssl_heads"])

    def meta(self):
        return {"task": self.name, "method": self.method, **network_class(self.method).settings()}

    # --- not for prediction -------------------------------------------------------------------------

    def results(self, out, meta, rule):
        raise UsageError(self.not_predicted)

    def evaluate(self, y, out, patients, sources, meta, resamples, seed):
        self.results(out, meta, None)
