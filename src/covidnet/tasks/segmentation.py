"""Segmentation of the lung fields (``covidnet train --task segmentation``, also ``covidnet lungs train``): a
segmenter from the registry (``models/segment.py``) trained from random initialisation on a build's
annotated lung masks (``data build --lung-masks``).

* **Data**: the train split's rows with an annotated mask (never a ``predicted`` one) for training, the val
  split's for model selection; the splits are the build's, by patient. The masks are staged beside the
  pixels, and augmented with them: the sampled flip, rotation, zoom and translation warp image and mask
  alike (bilinear for the image, nearest for the mask), brightness the image alone.
* **Loss**: binary cross-entropy plus ``--dice-weight`` x soft Dice (1 - 2|P∩T| / (|P| + |T|) over the
  batch), both over the pixels that are not ``ignore`` (127) in the annotation, at the stored side (the
  network's logits are resized to it when ``--size`` differs).
* **Selection**: after each epoch the validation images are segmented through ``forward`` (what eval, predict
  and the ONNX export compute: ``models.segment.lung_logits``), a pixel is lung where ``contract.is_lung``
  says, and each image is scored by its Dice (``metrics.segmentation.dice``) over its non-ignore pixels;
  the run is selected on their mean (``val_dice``, the higher the better).

Checkpoints record ``task`` "segmentation" (earlier versions: "lungs"), the class ``lung`` and the threshold.
"""

from __future__ import annotations

import numpy as np

from ..contract import THRESHOLD, is_lung
from ..data.lungmasks import IGNORE, LUNG
from ..errors import ConfigError
from .base import Task


class SegmentationTask(Task):
    name = "segmentation"
    kind = "segmenter"
    needs = "images with annotated lung masks (build with --lung-masks NAME=DIR)"
    not_predicted = "a lung segmenter; its masks come from covidnet lungs predict"
    title = "covidnet lung segmentation evaluation"
    monitor, mode = "val_dice", "max"
    options = ("dice_weight",)
    defaults = {
        "arch": "lung-unet",
        "epochs": 40,
        "lr": 1e-3,
        "plateau_factor": 0.5,
        "translate": 0.05,
        "zoom_min": 0.9,
        "zoom_max": 1.1,
        "eval_batch_size": 32,
        "precise_bn": 0,
    }

    def __init__(self, dice_weight: float = 1.0):
        self.outputs = ["lung"]
        self.dice_weight = dice_weight

    @classmethod
    def from_config(cls, cfg) -> SegmentationTask:
        if cfg.dice_weight < 0:
            raise ConfigError(f"--dice-weight must be >= 0, not {cfg.dice_weight}")
        if cfg.size and cfg.size < 32:
            raise ConfigError(f"--size must be at least 32 px (or 0: the stored size), not {cfg.size}")
        return cls(cfg.dice_weight)

    # --- data ---------------------------------------------------------------------------------------

    def rows(self, store, split):
        return store.mask_rows(split)

    def targets(self, store, rows):
        return None  # the masks are staged as an array

    def contract(self, store, cfg):
        from ..models import get_spec

        mean, std = get_spec(cfg.arch).normalisation(1)
        return store.contract.for_model(cfg.size or store.size, 1, mean, std)

    def arrays(self, store, contract):
        layer = store.mask_layer()  # a store without masks fails here, naming the flag to build with
        return {"pixels": (store, contract.standardise), "masks": (layer, None)}

    def check(self, cfg, store, train_rows):
        store.mask_layer()

    # --- the step -----------------------------------------------------------------------------------

    def create_model(self, cfg, run):
        from ..models import create_model

        return create_model(cfg.arch, num_classes=1, in_channels=1)

    def batch(self, run, pos, params, hosts):
        from ..augment import augment_labels

        m = (run.arrays["masks"][pos] if hosts["masks"] is None else hosts["masks"]).to(run.device, non_blocking=True)
        m = m.unsqueeze(1).float()
        if params is not None:
            m = augment_labels(m, params)
        x = run.input(pos, params, hosts["pixels"])
        return {"x": x, "target": (m == LUNG).float(), "valid": (m != IGNORE).float()}

    def step(self, net, batch):
        import torch.nn.functional as F

        logits = net(batch["x"]).float()
        target = batch["target"]
        if logits.shape[-2:] != target.shape[-2:]:
            logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
        return lung_loss(logits, target, batch["valid"], self.dice_weight), {}

    def forward(self, model, unit, contract, memory_format=None):
        from ..models.segment import lung_logits

        return lung_logits(model, unit, contract, memory_format)[:, 0]

    # --- judging a run ------------------------------------------------------------------------------

    def validation_targets(self, run, pos):
        return run.arrays["masks"][pos].cpu().numpy()

    def validation(self, y, out):
        """Mean Dice over the validation images of the stored masks ``y`` (N, S, S) and the logits ``out``,
        each image's non-ignore pixels; and the loss on them."""
        import torch

        from ..metrics.segmentation import dice

        out = out.numpy() if isinstance(out, torch.Tensor) else np.asarray(out)
        valid, truth, pred = y != IGNORE, y == LUNG, is_lung(out)
        scores = [dice(pred[k] & valid[k], truth[k] & valid[k]) for k in range(len(y))]
        t = torch.from_numpy(truth[:, None].astype(np.float32))
        loss = lung_loss(
            torch.from_numpy(out[:, None]), t, torch.from_numpy(valid[:, None].astype(np.float32)), self.dice_weight
        )
        return {"loss": float(loss), "dice": float(np.mean(scores)) if scores else float("nan")}

    def log(self, val):
        return {"val_dice": val["dice"]}, f"Dice {val['dice']:.4f}"

    def final(self, row):
        return f"val Dice {row['val_dice']:.4f}"

    def meta(self):
        return {"task": self.name, "classes": list(self.outputs), "threshold": THRESHOLD}


def lung_loss(logits, target, valid, dice_weight: float):
    """BCE over the valid pixels plus ``dice_weight`` x the batch's soft Dice loss over them; all (B, 1, H, W)."""
    import torch.nn.functional as F

    n = valid.sum().clamp_min(1.0)
    bce = F.binary_cross_entropy_with_logits(logits, target, weight=valid, reduction="sum") / n
    p, t = logits.sigmoid() * valid, target * valid
    soft_dice = 1 - (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1)
    return bce + dice_weight * soft_dice
