"""``covidnet study shortcuts``: which mitigation makes the model read the disease rather than the hospital?

The baseline (the recipe as ``covidnet train`` runs it) and each mitigation (a ``Variant``: a few
``TrainConfig`` settings) are trained on the same dataset and split with the same seeds, each run is
evaluated on the same test images, and the shortcut audit runs on each checkpoint. The figures that a
source cannot fake come first: the **within-source** pairwise AUCs (``metrics.classification``), the
audit's occlusion of the lungs, and, with ``--loso-epochs``, accuracy on a source held out of training.

Uncertainty has two parts, reported apart:

* the **seeds** (training noise): each figure's spread (SD) over the seeds, and every seed's own value;
* the **test images** (sampling noise): a 95 % patient-bootstrap interval of the *seed mean*: each
  resample of patients is scored by every seed's predictions and the scores averaged, so the interval is
  of the figure the table shows. A variant's difference from the baseline gets its own interval from the
  same resamples (paired: both score the same patients), which is narrower than comparing two intervals.

Model selection inside each run uses the validation split only (``covidnet train``'s best.pt); the study
chooses nothing: every variant's settings are fixed before it runs, and the test split is read once per
run, by the evaluation and the audit. Each run writes ``runs/VARIANT/seedN/result.json`` and its test
predictions when it is done, so a study that was stopped continues, with ``--resume``, at the first run
without them (a run stopped mid-training resumes from its ``last.pt``).

The parts: ``design`` (what makes a kind of study: its arms and the arm they are compared with),
``variants`` (the shortcut study's arms, ``SHORTCUTS``), ``planning`` (``StudyConfig`` and every run's
``TrainConfig``, checked before any training; run folders; resume rules), ``runs`` (one run: train,
evaluate, audit, its files), ``summary`` (seed means, intervals, paired differences, findings) and ``page``
(tables, the plot, study.json, table.md, index.html); here, ``run_study``. They take the study's arms from
``cfg.design``, so a second kind of study is a second ``Design`` and a config whose ``design`` returns it.
"""

from __future__ import annotations

from .design import Design
from .page import markdown_table, pair_rows, plot_study, summary_rows, write_outputs
from .planning import STUDY_FILE, STUDY_SETS, StudyConfig, check_folder, plan, run_dir
from .runs import AUDIT_FILE, PREDICTIONS_FILE, RESULT_FILE, audit_figures, run_all, run_one
from .summary import findings, pair_key, reference_of, signed_ci, summarize
from .transfer import TransferConfig, run_transfer
from .variants import ACQUISITION, DEFAULT_VARIANTS, SHORTCUTS, VARIANTS, Variant

__all__ = [
    "ACQUISITION",
    "AUDIT_FILE",
    "DEFAULT_VARIANTS",
    "PREDICTIONS_FILE",
    "RESULT_FILE",
    "SHORTCUTS",
    "STUDY_FILE",
    "STUDY_SETS",
    "VARIANTS",
    "Design",
    "StudyConfig",
    "TransferConfig",
    "Variant",
    "audit_figures",
    "check_folder",
    "findings",
    "markdown_table",
    "pair_key",
    "pair_rows",
    "plan",
    "plot_study",
    "reference_of",
    "run_dir",
    "run_one",
    "run_study",
    "run_transfer",
    "signed_ci",
    "summarize",
    "summary_rows",
    "write_outputs",
]


def run_study(cfg: StudyConfig) -> dict:
    """Run (or continue, ``cfg.resume``) the study ``cfg`` describes (``cfg.design``: the shortcut study's for a
    ``StudyConfig``); returns what study.json holds."""
    check_folder(cfg)
    runs = plan(cfg)  # every refusal before the first run
    base, results = run_all(cfg, runs)
    out = {**base, "state": "complete", "runs": results, "summary": summarize(cfg, results)}
    write_outputs(cfg, out)
    return out
