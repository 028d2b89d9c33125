"""``covidnet audit``: does the model see the disease or the hospital?

COVIDx's COVID-19 images and its controls come from different hospitals, scanners and age groups, and
a classifier can score well by recognising the source (DeGrave, Janizek & Lee, Nat. Mach. Intell.
2021). Each test here gives a figure, the threshold that turns it into a verdict (ok / warning /
fail), and a plain-language reading:

1. within-source discrimination: the pairwise AUC of each class pair inside each source that holds two
   classes (``metrics.classification.within_source_auc``) on the audited split, where the source cannot
   give the class away: the one figure a source shortcut cannot inflate, listed first; beside it the
   within-site figures (``metrics.within.within_site_auc``: pairs taken at one site, pooled; within site
   and view; the view alone), the pooled ones judged with the source pairs.
2. source predictability: a linear probe (scikit-learn logistic regression, cross-validated by patient)
   predicts the source from the model's frozen features and from raw downsampled pixels, among images
   of the same class (when sources contribute different classes, the disease alone predicts the
   source); the mutual information between source and label in the dataset is reported beside it.
3. leave-one-source-out: for each source holding more than one class, retrain without it (the
   checkpoint's own recipe, a short schedule, ``--loso-epochs``) and compare it with the other
   sources' test split.
4. occlusion: the model evaluated with the lung fields hidden (filled with the mean of the rest of the
   image), and with only the image border kept; a model that still beats chance without the lungs is
   using something else.
5. attention inside the lungs: the share of each image's Grad-CAM mass (for the class the model calls)
   that falls inside its lung mask, per source and per class.
6. leakage: patients in two splits, identical and near-identical images across splits or sources.
7. population confounders: label x age group and label x view cross-tabulations.

One module per test (``within_source``, ``source_probe``, ``leave_one_out``, ``occluded``, ``attention``,
``leaks``, ``confounders``), their thresholds and verdict rules (``verdicts``), where the lungs are
(``lung_fields``, shared by the occlusion and attention tests), how images are read (``batches``), and the
page (``page``); here, ``run_audit`` runs them all. Every public name of those modules is importable from
``covidnet.audit``.

The lungs are each image's lung mask, dilated by ``LUNG_MARGIN``, where the dataset has masks (``data
build --lung-masks`` or ``--lungs CKPT``), else a fixed central box (``LUNG_BOX``): see ``lung_fields``. The
occlusion test hides them, the attention test counts Grad-CAM mass inside them (it needs masks).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import __version__
from ..config import option
from ..contract import LUNG_MARGIN
from ..data.store import open_store
from ..errors import ConfigError
from ..files import write_json
from ..runtime import load
from ..tasks import softmax
from .attention import (
    ATTENTION_EXAMPLES,
    ATTENTION_MIN_IMAGES,
    ATTENTION_RESAMPLES,
    attention_inside_lungs,
    lung_attention,
)
from .batches import CHUNK, chunks
from .confounders import PAEDIATRIC_AGE, population
from .leaks import leakage
from .leave_one_out import leave_one_source_out
from .lung_fields import LUNG_BOX, LungFields, box_region
from .occluded import BORDER, macro_auc, occlude, occlusion
from .page import VERDICT_COLOUR, plot_attention, plot_audit, write_audit_report
from .source_probe import mutual_information, probe, source_predictability, thumbnails
from .verdicts import (
    ATTENTION_FAIL,
    ATTENTION_WARN,
    EXCESS_FAIL,
    EXCESS_WARN,
    LOSO_FAIL,
    LOSO_WARN,
    MI_WARN,
    OCCLUSION_FAIL,
    OCCLUSION_WARN,
    WITHIN_FAIL,
    WITHIN_WARN,
    interval_verdict,
    threshold_verdict,
    worst_verdict,
)
from .within_source import WITHIN_RESAMPLES, within_source_discrimination

__all__ = [
    "AuditConfig",
    "ATTENTION_EXAMPLES",
    "ATTENTION_FAIL",
    "ATTENTION_MIN_IMAGES",
    "ATTENTION_RESAMPLES",
    "ATTENTION_WARN",
    "BORDER",
    "CHUNK",
    "EXCESS_FAIL",
    "EXCESS_WARN",
    "LOSO_FAIL",
    "LOSO_WARN",
    "LUNG_BOX",
    "LUNG_MARGIN",
    "MI_WARN",
    "OCCLUSION_FAIL",
    "OCCLUSION_WARN",
    "PAEDIATRIC_AGE",
    "VERDICT_COLOUR",
    "WITHIN_FAIL",
    "WITHIN_RESAMPLES",
    "WITHIN_WARN",
    "LungFields",
    "attention_inside_lungs",
    "box_region",
    "chunks",
    "interval_verdict",
    "leakage",
    "leave_one_source_out",
    "lung_attention",
    "macro_auc",
    "mutual_information",
    "occlude",
    "occlusion",
    "plot_attention",
    "plot_audit",
    "population",
    "probe",
    "run_audit",
    "source_predictability",
    "threshold_verdict",
    "thumbnails",
    "within_source_discrimination",
    "worst_verdict",
    "write_audit_report",
]


@dataclass
class AuditConfig:
    """``covidnet audit``: the shortcut tests of a classification checkpoint on a built dataset."""

    checkpoint: str = option(help="a classification checkpoint (best.pt)")
    data: str = option(help="a dataset folder written by `covidnet data build`")
    split: str = option(
        "test", "split for the within-source and occlusion tests (train, val, test or all)",
        choices=("train", "val", "test", "all"),
    )  # fmt: skip
    max_images: int = option(0, "audit a random subset of this many images (0: all)")
    loso_epochs: int = option(
        0, "leave-one-source-out: retrain without each source for this many epochs (0: skip; optional)"
    )
    seed: int = option(0, "seed of the subset, the probes and the bootstrap")
    report: str | None = option(None, "write an HTML report (summary table first) to OUT_DIR", metavar="OUT_DIR")
    json: str | None = option(None, "write the audit as JSON to OUT", metavar="OUT")
    device: str = option("auto", "auto, cpu, cuda")


def run_audit(cfg: AuditConfig) -> dict:
    """The shortcut audit of a classification ``checkpoint`` on the built dataset ``data`` (the
    within-source and occlusion tests on ``split``); an HTML page in ``report`` and JSON in ``json`` when
    given."""
    checkpoint, data, split, device, seed, loso_epochs = (
        cfg.checkpoint, cfg.data, cfg.split, cfg.device, cfg.seed, cfg.loso_epochs
    )  # fmt: skip
    max_images, report = cfg.max_images, cfg.report
    lm = load(checkpoint, device, tasks=("classification",), backend="torch")
    store = open_store(data)
    lm.check_store(store, str(data))
    classes = lm.classes
    binary = len(classes) == 2
    rows = store.rows()
    rng = np.random.default_rng(seed)
    if max_images and len(rows) > max_images:
        rows = np.sort(rng.choice(rows, max_images, replace=False))
    index = [store.index[r] for r in rows]
    images = store.view(rows)  # read a batch at a time by every test: the store is never in memory whole
    labels = store.labels(rows, binary=binary)
    sources = np.array([r["source"] for r in index])
    groups = np.array(store.patients(rows))
    feats = lm.features(images)
    pixels = np.concatenate([thumbnails(chunk) for chunk in chunks(images)])
    eval_rows = (
        np.array([i for i, r in enumerate(index) if r["split"] == split]) if split != "all" else np.arange(len(index))
    )
    if len(eval_rows) == 0:
        raise ConfigError(f"{data}: no images in split {split!r} for the occlusion test")
    evaluated = store.view(rows[eval_rows])
    eval_probs = softmax(lm.logits(evaluated), lm.meta.get("temperature"))
    lungs = LungFields(store, rows[eval_rows])
    attention, examples = attention_inside_lungs(lm, evaluated, labels[eval_rows], groups[eval_rows], lungs, seed)
    tests = {
        "within_source": within_source_discrimination(
            labels[eval_rows],
            eval_probs,
            classes,
            groups[eval_rows],
            sources[eval_rows],
            seed=seed,
            sites=store.sites(rows[eval_rows]),
            views=store.views(rows[eval_rows]),
        ),
        "source_predictability": source_predictability(feats, pixels, sources, labels, groups, classes, seed),
        "leave_one_source_out": leave_one_source_out(lm.meta, data, loso_epochs, device, seed),
        "occlusion": occlusion(lm, evaluated, labels[eval_rows], lungs),
        "attention_inside_lungs": attention,
        "leakage": leakage(index, images),
        "population": population(index),
    }
    out = {
        "checkpoint": str(checkpoint),
        "data": str(data),
        "split": split,
        "n_images": int(len(rows)),
        "classes": list(classes),
        "version": __version__,
        "tests": tests,
        "summary": [
            {"test": t["test"], "verdict": t["verdict"], "reading": t.get("reading", t.get("reason", ""))}
            for t in tests.values()
        ],
    }
    if report:
        write_audit_report(report, out, examples)
    if cfg.json:
        write_json(cfg.json, out)
    return out
