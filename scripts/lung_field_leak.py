"""What a ``--lungs mask`` model still reads when the audit hides the lungs (docs/study.md, "Why lungs-mask
still fails occlusion").

A lung-field model sets every pixel outside the dilated lung field to their mean, so two things survive the
mask: the film's grey level and the outline of the field (where it lies, how large it is). This script
measures each on the evaluated split, with 95 % patient-bootstrap intervals:

* the audit's occlusion AUCs (macro one-vs-rest) of the model: none, lungs hidden, border only;
* the segmenter on the occluded films: its field's share of the image and its overlap (IoU) with the field
  it finds on the whole film;
* the network behind the mask given one flat grey per image (the lungs-hidden film's mean), and given the
  outline alone (the field found on the whole film, the same two greys inside and outside for every image);
* the field's share of the image alone, no network: a logistic regression fitted on the training split's
  shares, scored on the evaluated split;
* the field's share per source and class, on the training and the evaluated split.

    .venv/bin/python scripts/lung_field_leak.py DATA CHECKPOINT [--split test] [--out leak.json]
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from covidnet.audit import LungFields, macro_auc, occlude
from covidnet.contract import uint8_to_unit
from covidnet.data.store import open_store
from covidnet.errors import CovidnetError
from covidnet.metrics.bootstrap import patient_bootstrap
from covidnet.models.lung_field import LungFieldClassifier, apply_lung_field
from covidnet.runtime import load
from covidnet.tasks import softmax

CHUNK = 128
GREYS = (0.35, 0.65)  # the outline-only input: inside and outside the field, the same for every image


def macro_auc_of(y: np.ndarray, scores: np.ndarray, classes: list[int]) -> float:
    """The audit's macro AUC over the classes a bootstrap resample holds on both sides (NaN under two)."""
    present = [c for c in classes if 0 < (y == c).sum() < len(y)]
    return macro_auc(y, scores, present) if len(present) >= 2 else float("nan")


class Leak:
    """The lung-field model of a checkpoint taken apart: its segmenter's field and its classifier alone."""

    def __init__(self, checkpoint: str):
        self.lm = load(checkpoint, "cpu", tasks=("classification",))
        self.m = self.lm.model.eval()
        if not isinstance(self.m, LungFieldClassifier) or self.m.mode != "mask":
            raise CovidnetError(f"{checkpoint}: not a --lungs mask model")

    def units(self, images: np.ndarray) -> torch.Tensor:
        """Stored pixels -> the classifier's input side, in [0, 1] (B, 1, S, S)."""
        c = self.lm.contract
        x = c.model_input(uint8_to_unit(torch.from_numpy(c.standardise(np.asarray(images)))))
        return x[:, :1] * self.m.std + self.m.mean

    def field(self, unit: torch.Tensor) -> torch.Tensor:
        return self.m.lung_field(unit)

    def classify(self, unit: torch.Tensor) -> np.ndarray:
        """The classifier behind the mask on an input already made: probabilities (B, K)."""
        x = ((unit - self.m.mean) / self.m.std).expand(-1, self.m.in_channels, -1, -1).contiguous()
        return softmax(self.m.net(x).float().numpy())


@torch.no_grad()
def measure(data: str, checkpoint: str, split: str, resamples: int, seed: int) -> dict:
    leak = Leak(checkpoint)
    store = open_store(data)
    leak.lm.check_store(store, data)
    classes = list(range(len(leak.lm.classes)))
    rows = store.rows(split)
    if len(rows) == 0:
        raise CovidnetError(f"{data}: no images in split {split!r}")
    y = store.labels(rows)
    patients = np.array(store.patients(rows))
    fields = LungFields(store, rows)
    per: dict[str, list] = {}
    areas = {"none": [], "lungs": [], "border": []}
    ious = {"lungs": [], "border": []}
    for k in range(0, len(rows), CHUNK):
        pos = np.arange(k, min(k + CHUNK, len(rows)))
        images = np.asarray(store.view(rows[pos]))
        whole = leak.field(leak.units(images))
        areas["none"].append(whole.flatten(1).mean(1).numpy())
        for mode in ("none", "lungs", "border"):
            occluded = occlude(images, mode, fields.regions(pos) if mode == "lungs" else None)
            per.setdefault(f"model_{mode}", []).append(softmax(leak.lm.logits(occluded)))
            if mode == "none":
                continue
            unit = leak.units(occluded)
            found = leak.field(unit)
            areas[mode].append(found.flatten(1).mean(1).numpy())
            union = ((found + whole) > 0).float().flatten(1).sum(1).clamp_min(1)
            ious[mode].append(((found * whole).flatten(1).sum(1) / union).numpy())
            if mode == "lungs":
                flat = unit.mean((2, 3), keepdim=True).expand_as(unit).clone()
                per.setdefault("flat_grey", []).append(leak.classify(flat))
                per.setdefault("lungs_hidden_whole_film_field", []).append(
                    leak.classify(apply_lung_field(unit, whole, "mask"))
                )
        outline = GREYS[0] * whole + GREYS[1] * (1 - whole)
        per.setdefault("outline_only", []).append(leak.classify(outline))
    probs = {k: np.concatenate(v) for k, v in per.items()}
    share = np.concatenate(areas["none"])

    # the field's share alone: fitted on the training split, scored here
    train_rows = store.rows("train")
    train_share = np.concatenate(
        [
            leak.field(leak.units(np.asarray(store.view(train_rows[k : k + CHUNK])))).flatten(1).mean(1).numpy()
            for k in range(0, len(train_rows), CHUNK)
        ]
    )
    train_y = store.labels(train_rows)
    fit = LogisticRegression(max_iter=1000).fit(train_share[:, None], train_y)
    p = np.zeros((len(rows), len(classes)))
    p[:, fit.classes_] = fit.predict_proba(share[:, None])
    probs["field_share_alone"] = p

    aucs = patient_bootstrap(
        lambda idx: {k: macro_auc_of(y[idx], v[idx], classes) for k, v in probs.items()}, patients, resamples, seed
    )

    def table(rows_, share_):
        y_ = store.labels(rows_)
        src = np.array(store.sources(rows_))
        return [
            {
                "source": s,
                "class": leak.lm.classes[c],
                "n": int(sel.sum()),
                "share_mean": round(float(share_[sel].mean()), 3),
                "share_sd": round(float(share_[sel].std()), 3),
            }
            for s in sorted(set(src))
            for c in classes
            if (sel := (src == s) & (y_ == c)).any()
        ]

    return {
        "data": data,
        "checkpoint": checkpoint,
        "split": split,
        "n": int(len(rows)),
        "patients": int(len(set(patients))),
        "macro_auc": {
            k: {"value": round(v["value"], 3), "ci95": [round(c, 3) for c in v["ci95"] or []]} for k, v in aucs.items()
        },
        "field_share": {m: round(float(np.concatenate(a).mean()), 3) for m, a in areas.items()},
        "field_iou_with_whole_film": {m: round(float(np.concatenate(a).mean()), 3) for m, a in ious.items()},
        "field_share_by_source": {"train": table(train_rows, train_share), split: table(rows, share)},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data")
    ap.add_argument("checkpoint")
    ap.add_argument("--split", default="test")
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="")
    a = ap.parse_args(argv)
    try:
        out = measure(a.data, a.checkpoint, a.split, a.resamples, a.seed)
    except CovidnetError as e:
        print(f"lung_field_leak: error: {e}", file=sys.stderr)
        return 2
    text = json.dumps(out, indent=1)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
