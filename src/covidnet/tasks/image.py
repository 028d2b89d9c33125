"""What the tasks whose network gives one output vector per image share (classification, severity, risk):
a classifier from the registry with as many outputs as the task, initialised (``--init``) at random, from
ImageNet (``efficientnet-lite0`` offline, the torchvision baselines by download), at random with the ImageNet
weights' per-tensor mean and std (``mean-var``, ``models/transfer.py``) or from a checkpoint, optionally frozen
but for its head (``--freeze-backbone``) and put behind a frozen lung segmenter (``--lungs crop|mask``, the
registered ``lung-field`` model); the contract's model half with the options that change preprocessing
(``--intensity``, ``--lungs``); a batch of augmented stored pixels and the targets of its rows.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

from ..checkpoint import classifier_arch, read_checkpoint
from ..errors import ConfigError, CovidnetError
from .base import Task

HEAD_MODULES = ("head", "classifier")  # what --freeze-backbone leaves trainable (every classifier has both)
DOWNLOAD_TIMEOUT = 15.0  # seconds without an answer before a download of ImageNet weights gives up
PRETRAINED_INITS = ("imagenet", "mean-var")  # --init values that start from ImageNet weights; random and a path
IMAGE_OPTIONS = (
    "in_channels intensity lungs lung_model lung_margin aug_gamma aug_blur aug_noise init freeze_backbone"
).split()


class ImageTask(Task):
    """One output vector per image; ``loss``, ``agreement`` (summed over a batch: correct calls, or absolute
    errors) and ``agreement_name`` (its log column) from the subclass."""

    agreement_name = "acc"
    options = tuple(IMAGE_OPTIONS)
    defaults = {
        "arch": "covidnet-cxr3b",
        "epochs": 10,
        "lr": 2e-5,
        "plateau_factor": 0.7,
        "translate": 0.10,
        "zoom_min": 0.85,
        "zoom_max": 1.15,
        "eval_batch_size": 64,
        "precise_bn": 512,
    }

    def loss(self, out, y):
        raise NotImplementedError

    def agreement(self, out, y):
        raise NotImplementedError

    # --- data ---------------------------------------------------------------------------------------

    def contract(self, store, cfg):
        from ..models import get_spec

        mean, std = get_spec(cfg.arch).normalisation(cfg.in_channels)
        return store.contract.for_model(
            cfg.size or store.size, cfg.in_channels, mean, std, cfg.intensity, cfg.lungs, cfg.lung_margin
        )

    def check(self, cfg, store, train_rows):
        if cfg.lungs != "none":
            lung_segmenter(cfg, store)

    # --- the network --------------------------------------------------------------------------------

    def create_model(self, cfg, run):
        from ..models import create_model
        from ..models.lung_field import lung_field_model

        model = _create(cfg, len(self.outputs))
        init_from_checkpoint(model, cfg)
        if cfg.freeze_backbone:  # COVIDNet-S: a frozen network's features, a small head trained on them
            for name, child in model.named_children():
                child.requires_grad_(name in HEAD_MODULES)
        if cfg.lungs != "none":  # the frozen segmenter goes in front, its weights part of the model's
            ckpt, source = lung_segmenter(cfg, run.store)
            meta = {"arch": ckpt["arch"], "arch_args": ckpt["arch_args"], "preprocess": ckpt["preprocess"]}
            segmenter = create_model(ckpt["arch"], **ckpt["arch_args"])
            segmenter.load_state_dict(ckpt["model"])
            model = lung_field_model(model, segmenter, {**meta, "source": source}, run.contract)
        return model

    def train_mode(self, model, cfg) -> None:
        """With ``--freeze-backbone`` the frozen part keeps its BatchNorm statistics too."""
        from ..models.lung_field import classifier_of

        if cfg.freeze_backbone:
            for name, child in classifier_of(model).named_children():
                child.train(name in HEAD_MODULES)

    # --- the step -----------------------------------------------------------------------------------

    def batch(self, run, pos, params, hosts):
        import torch

        return {"x": run.input(pos, params, hosts["pixels"]), "y": run.targets[torch.from_numpy(pos).to(run.device)]}

    def step(self, net, batch):
        out = net(batch["x"])
        return self.loss(out.float(), batch["y"]), {self.agreement_name: self.agreement(out.detach(), batch["y"])}

    def forward(self, model, unit, contract, memory_format=None):
        return model(contract.model_input(unit, memory_format))


def _create(cfg, num_outputs: int):
    """The registry's network for ``cfg.arch``: at random, with ImageNet weights (``--init imagenet``), or
    with random weights of the ImageNet weights' per-tensor mean and std (``--init mean-var``)."""
    from ..models import create_model
    from ..models.transfer import mean_var_

    if cfg.init not in PRETRAINED_INITS:
        return create_model(cfg.arch, num_classes=num_outputs, in_channels=cfg.in_channels)
    model = imagenet_model(cfg.arch, num_outputs, cfg.in_channels, flag=f"--init {cfg.init}")
    if cfg.init == "mean-var":
        mean_var_(model, cfg.seed)
    return model


def imagenet_model(arch: str, num_classes: int, in_channels: int, flag: str = "--init imagenet"):
    """``arch`` with ImageNet weights in its trunk and a fresh classifier for ``num_classes``: from an
    installed extra where the registry has one (``efficientnet-lite0``: ``covidnet[pretrained]``, no
    download), else torchvision's, downloaded into torch.hub's cache for the torchvision baselines. One line,
    naming ``flag``, for an architecture with neither or weights that cannot be had."""
    from ..models import create_model, get_spec, list_models

    spec = get_spec(arch)
    if spec.imagenet is not None:
        model = create_model(arch, num_classes=num_classes, in_channels=in_channels)
        spec.imagenet(model)
        return model
    if spec.family != "torchvision":
        offline = [n for n in list_models() if get_spec(n).imagenet is not None]
        raise ConfigError(
            f"{flag} needs ImageNet weights, which {', '.join(offline)} (installed with 'covidnet[pretrained]') "
            f"and the torchvision baselines (downloaded) have, not {arch}; use --init random or a checkpoint"
        )
    fetch_imagenet_weights(arch)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):  # torch.hub chatter
        model = create_model(arch, num_classes=num_classes, in_channels=in_channels, weights="imagenet")
    del model.arch_args["weights"]  # the weights travel in the checkpoint: rebuilding it must not download them
    return model


def fetch_imagenet_weights(arch: str, timeout: float = DOWNLOAD_TIMEOUT) -> Path:
    """torchvision's ImageNet weights of ``arch`` in torch.hub's cache, downloaded there (atomically, with a
    ``timeout`` on the connection) when they are not yet: torchvision's own download has no timeout, so on a
    machine without internet it would hang. One line saying where to put the file when it cannot."""
    import urllib.request

    import torch
    import torchvision

    from ..files import atomic_path

    weights = torchvision.models.get_model_weights(arch).DEFAULT
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if cached.is_file():
        return cached
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(weights.url, timeout=timeout) as response, atomic_path(cached) as tmp:
            with open(tmp, "wb") as f:
                while block := response.read(1 << 20):
                    f.write(block)
    except Exception as e:
        raise CovidnetError(
            f"ImageNet weights for {arch} are not cached and could not be downloaded "
            f"({type(e).__name__}); download {weights.url} and place it at {cached}"
        ) from None
    return cached


def init_from_checkpoint(model, cfg) -> None:
    """``--init CHECKPOINT``: the checkpoint's weights but its last layer's (which starts afresh); a lung-field
    checkpoint gives its classifier's. Another architecture or channel count is refused in one line."""
    if cfg.init in ("random", *PRETRAINED_INITS):
        return
    if not Path(cfg.init).is_file():
        raise ConfigError(f"--init {cfg.init}: neither random, imagenet, mean-var nor a checkpoint file")
    ckpt = read_checkpoint(cfg.init)
    if classifier_arch(ckpt) != cfg.arch:
        raise ConfigError(f"{cfg.init}: a checkpoint of {classifier_arch(ckpt)}, not of --arch {cfg.arch}")
    if ckpt["arch_args"].get("in_channels") != cfg.in_channels:
        raise ConfigError(
            f"{cfg.init}: made for {ckpt['arch_args'].get('in_channels')}-channel input, "
            f"not --in-channels {cfg.in_channels}"
        )
    weights = ckpt["model"]
    if ckpt["arch"] != classifier_arch(ckpt):  # a lung-field model's classifier (its segmenter is --lung-model's)
        weights = {k.removeprefix("net."): v for k, v in weights.items() if k.startswith("net.")}
    head = {f"classifier.{k}" for k in model.get_classifier().state_dict()}
    missing, unexpected = model.load_state_dict({k: v for k, v in weights.items() if k not in head}, strict=False)
    if set(missing) - head or unexpected:
        raise ConfigError(
            f"{cfg.init}: weights do not fit {cfg.arch} (missing {sorted(set(missing) - head)[:3]}, "
            f"unexpected {unexpected[:3]})"
        )


def lung_segmenter(cfg, store) -> tuple[dict, str]:
    """``--lungs crop|mask``: the lung segmenter's checkpoint, from ``--lung-model`` or else the one the dataset
    was built with, and where it came from; one line, before any training, when there is none or it is not a
    segmenter."""
    path = cfg.lung_model
    if not path:
        built = store.build_config().get("lungs") or ""
        if not built:
            raise ConfigError(
                f"--lungs {cfg.lungs} needs a lung segmenter and {cfg.data} was built without one: give --lung-model "
                "(a segmentation checkpoint: covidnet train --task segmentation), or build the dataset with "
                "data build --lungs CKPT"
            )
        if not built.endswith(".pt") or not Path(built).is_file():
            raise ConfigError(
                f"--lungs {cfg.lungs}: {cfg.data} was built with --lungs {built}, which is not a readable "
                "segmentation checkpoint (.pt) here; give --lung-model"
            )
        path = built
    if not Path(path).is_file():
        raise ConfigError(f"--lung-model {path}: not found")
    ckpt = read_checkpoint(path)
    if ckpt.get("task") != "segmentation":
        raise ConfigError(
            f"{path}: a {ckpt.get('task', 'classification')} checkpoint, not a lung segmenter; --lung-model takes "
            "the best.pt of covidnet train --task segmentation (covidnet lungs train)"
        )
    return ckpt, str(cfg.lung_model or "the dataset's --lungs model")
