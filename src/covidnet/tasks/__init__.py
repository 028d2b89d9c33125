"""What a network is trained to output, as training, evaluation and prediction see it: a *task*. All that
differs between tasks lives in this package, one module a task, and nowhere else (``base`` says what a task
supplies):

* ``classification`` (``classification.py``): COVIDx's classes, softmax, cross-entropy, and the
  classification-only training options (rebalancing, class weights, source balancing, the source
  adversary of ``debias.py``); the default, and what a checkpoint without a ``task`` key is;
* ``severity`` (``severity.py``, COVIDNet-S): geographic and opacity extent, 0-8;
* ``risk`` (``risk.py``, COVID-RiskNet): bins of days since symptom onset, an ordinal head;
* ``segmentation`` (``segmentation.py``): the lung fields, one logit per pixel;
* ``self-supervised`` (``selfsup.py``, ``simsiam.py``, ``moco.py``, ``simclr.py``): SimSiam, MoCo v2 or SimCLR
  pretraining of a classifier's backbone on unlabelled films (``covidnet pretrain``).

The first three share ``image.py`` (a classifier with a head per image: its initialisation, freezing and
lung-field input). ``make_task`` is the one place a task is built from a training config, and
``task_from_meta`` from a checkpoint's or an export's metadata. This package imports no torch at import
time: ``covidnet predict --onnx`` runs without it.
"""

from __future__ import annotations

from ..data.records import CLASSES
from ..errors import ConfigError
from .base import COMMON_OPTIONS, Task
from .classification import ClassificationTask, decide, softmax, triage_rule
from .risk import DEFAULT_RISK_BINS, RiskTask, bin_names, parse_bins
from .segmentation import SegmentationTask
from .selfsup import SelfSupervisedTask
from .severity import SeverityTask

TASKS: dict[str, type[Task]] = {
    t.name: t for t in (ClassificationTask, SeverityTask, RiskTask, SegmentationTask, SelfSupervisedTask)
}


def task_class(name: str) -> type[Task]:
    """The task registered as ``name``; one line naming the choices otherwise."""
    try:
        return TASKS[name]
    except KeyError:
        raise ConfigError(f"--task must be one of {', '.join(TASKS)}, not {name!r}") from None


def make_task(cfg) -> Task:
    """The task a training config (``TrainConfig``) asks for, with its options; a malformed option is one line."""
    return task_class(cfg.task).from_config(cfg)


def task_from_meta(meta: dict) -> Task:
    """The task a checkpoint or an export was trained for (classification when it does not say)."""
    name = meta.get("task", "classification")
    if name == "risk":
        return RiskTask(meta.get("risk_bins") or DEFAULT_RISK_BINS)
    if name == "classification":
        return ClassificationTask(meta.get("classes", CLASSES))
    return task_class({"lungs": "segmentation"}.get(name, name))()


def result_line(result: dict) -> str:
    """A prediction result (``predict_paths``) as one line of text, whatever its task."""
    return task_class(result.get("task", "classification")).line(result)


__all__ = [
    "COMMON_OPTIONS",
    "ClassificationTask",
    "DEFAULT_RISK_BINS",
    "RiskTask",
    "SegmentationTask",
    "SelfSupervisedTask",
    "SeverityTask",
    "TASKS",
    "Task",
    "bin_names",
    "decide",
    "make_task",
    "parse_bins",
    "result_line",
    "softmax",
    "task_class",
    "task_from_meta",
    "triage_rule",
]
