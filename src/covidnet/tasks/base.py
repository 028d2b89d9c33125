"""What every task supplies: the interface the one training loop (``covidnet.train``), evaluation,
prediction and the service call, and nothing else varies between tasks.

A task says

* **what it learns from**: the rows of a built dataset it can use (``rows``), their targets (``targets``),
  the arrays the loop stages for them (``arrays``: the stored pixels, and for segmentation the masks),
  and the preprocessing contract its model reads (``contract``);
* **how a step goes**: the network it trains (``create_model``, from the registry, initialised), the
  module a step calls (``trainable``), how a batch is built and augmented (``batch``), its loss and the
  figures summed over the batch (``step``), how stored pixels become its outputs (``forward``, the same
  for validation, ``covidnet eval``, ``predict`` and the service);
* **how a run is judged**: ``validation`` (the figures logged after every epoch), the figure a run is
  selected on (``monitor``, and ``mode``: min or max), the log's columns (``log``);
* **what its checkpoint records** (``meta``), and what it is evaluated and reported on (``evaluate``,
  ``summary``, ``figures``), and how one prediction reads (``results``, ``line``).

``defaults``: the training settings whose default is the task's own (a segmenter learns at 1e-3 where a
classifier learns at 2e-5), filled into ``TrainConfig`` when not given; ``options``: the settings, beyond
every task's, that it takes. This module imports no torch at import time.
"""

from __future__ import annotations

import numpy as np

from ..errors import UsageError

# training settings every task takes (the rest belong to the tasks that list them in ``options``)
COMMON_OPTIONS = (
    "data out task arch epochs batch_size lr scale_lr optimizer weight_decay plateau_factor plateau_patience size "
    "translate rotate hflip brightness zoom_min zoom_max seed device amp channels_last compile eval_batch_size "
    "host_memory_gb max_steps precise_bn resume progress"
).split()


class Task:
    """The interface (see the module's docstring). Subclasses set ``name`` and ``outputs``."""

    name: str
    outputs: list[str]  # one name per network output (a segmenter's: per pixel)
    kind = "classifier"  # the registry kind of network it trains (``covidnet.models``)
    needs = "images"  # what it needs from a dataset, as an error message says it
    title = "covidnet evaluation"
    monitor, mode = "val_loss", "min"  # the validation figure a run is selected on, and its better direction
    defaults: dict = {}
    options: tuple[str, ...] = ()
    reads_label_files = False  # ``eval --labels``: raw images named in a COVIDx label file (class labels)
    not_predicted = ""  # why ``predict`` refuses this task's models, in one line ("": it predicts)

    # --- data ---------------------------------------------------------------------------------------

    def rows(self, store, split: str) -> np.ndarray:
        return store.rows(split)

    def targets(self, store, rows: np.ndarray) -> np.ndarray | None:
        """Each row's target (None: the task's targets are one of its ``arrays``)."""
        raise NotImplementedError

    def contract(self, store, cfg):
        """The store's contract with the model's half, as ``cfg`` asks."""
        raise NotImplementedError

    def arrays(self, store, contract) -> dict:
        """What the loop stages for the rows, by name: ``(source, transform)`` with ``source`` a store or a
        store's layer read by row and ``transform`` applied to each batch as read (or None)."""
        return {"pixels": (store, contract.standardise)}

    def check(self, cfg, store, train_rows: np.ndarray) -> None:
        """What the task refuses before any pixel is read (``covidnet study`` checks every run with it)."""

    def setup(self, run) -> None:
        """Before the model is made: what the task needs of the staged rows (class weights, sampling groups)."""

    # --- the step -----------------------------------------------------------------------------------

    def create_model(self, cfg, run):
        """The network, made and initialised (the seed is set by the loop)."""
        raise NotImplementedError

    def train_mode(self, model, cfg) -> None:
        """After the loop put the network in training mode: what the task keeps in eval mode."""

    def trainable(self, model):
        """The module a step calls and the parameters the optimiser steps (the model's trainable ones)."""
        return model, [p for p in model.parameters() if p.requires_grad]

    def sampling(self, run) -> dict:
        """``train.sampler.epoch_batches``' options: rebalancing of a class, sources drawn equally often."""
        return {}

    def start_epoch(self, run, batches: list[np.ndarray]) -> None:
        """Before an epoch's first step, with the epoch's batches (positions of training rows)."""

    def batch(self, run, pos: np.ndarray, params, hosts: dict) -> dict:
        """The network's input and targets for training positions ``pos``, augmented with ``params`` (None:
        as stored); ``hosts``: the staged arrays' batches when read ahead (streamed), else None each."""
        raise NotImplementedError

    def step(self, net, batch: dict) -> tuple:
        """(loss, figures summed over the batch as device tensors, by log name) for one batch."""
        raise NotImplementedError

    def forward(self, model, unit, contract, memory_format=None):
        """Stored pixels as floats in [0, 1] (B, 1, S, S) -> the task's outputs: what validation, eval,
        predict and the service compute, and what an ONNX export holds."""
        raise NotImplementedError

    def after_epoch(self, run) -> tuple[dict, str]:
        """Log columns and text the task adds at the end of an epoch (beyond its validation)."""
        return {}, ""

    def state(self) -> dict:
        """What a resumable checkpoint carries of the task's own training state (e.g. an adversary)."""
        return {}

    def load_state(self, ckpt: dict) -> None:
        pass

    # --- judging a run ------------------------------------------------------------------------------

    def validate(self, run, outputs) -> dict:
        """The validation figures of a run after an epoch: the outputs of the validation rows through
        ``forward`` (``outputs(positions, forward)``: the loop's forward over stored pixels), each image counted
        exactly once however many processes share the work, against ``validation_targets``."""
        import torch

        mine = run.val_pos[run.dist.rank :: run.dist.world]
        out = outputs(mine, lambda x: self.forward(run.model, x, run.contract, run.mem_format))
        parts = [(p, o) for p, o in run.dist.gather((mine, out)) if len(p)]
        pos = np.concatenate([p for p, _ in parts])
        return self.validation(self.validation_targets(run, pos), torch.cat([o for _, o in parts]))

    def validation_targets(self, run, pos: np.ndarray):
        """The targets ``validation`` compares the outputs of positions ``pos`` with."""
        import torch

        return run.targets[torch.from_numpy(pos).to(run.targets.device)].cpu().numpy()

    def validation(self, y, out) -> dict:
        """What training logs after each epoch: the loss and point metrics."""
        raise NotImplementedError

    def log(self, val: dict) -> tuple[dict, str]:
        """The validation figures as log columns, and as the per-epoch line shows them."""
        row = {f"val_{k.replace('.', '_')}": v for k, v in val.items() if k != "loss"}
        shown = " ".join(
            f"{k} {v:.3f}"
            for k, v in val.items()
            if k != "loss" and k.split(".")[-1] in ("r2", "spearman", "accuracy", "macro_f1")
        )
        return row, shown

    def final(self, row: dict) -> str:
        """The last epoch's figure ``covidnet train`` ends with."""
        return " / ".join(f"{k} {v:.3f}" for k, v in row.items() if k.endswith(("_r2", "val_accuracy")))

    def meta(self) -> dict:
        """What the checkpoint carries for this task."""
        return {"task": self.name}

    # --- evaluation and prediction ------------------------------------------------------------------

    def evaluate(
        self,
        y: np.ndarray,
        out: np.ndarray,
        patients,
        sources,
        meta: dict,
        resamples: int,
        seed: int,
        sites=None,
        views=None,
    ) -> dict:
        """The evaluation JSON of outputs ``out`` against targets ``y``; ``sites`` and ``views`` (one per row:
        where the film was taken, '' unknown; 'PA', 'AP', 'AP supine', '' unknown) for the figures within them."""
        raise NotImplementedError

    def results(self, out: np.ndarray, meta: dict, rule: dict | None) -> list[dict]:
        """One prediction result (the task's fields) per row of ``out``."""
        raise NotImplementedError

    def cam_outputs(self, result: dict) -> list[tuple[int, str | None]]:
        """The outputs a heat map explains for one result, each with the tag its file name carries."""
        raise NotImplementedError

    def summary(self, metrics: dict) -> tuple[list[str], list[list[str]]]:
        """The report's and the terminal's summary table: (header, rows)."""
        raise NotImplementedError

    def disagreements(self, y: np.ndarray, out: np.ndarray, meta: dict, k: int) -> list[dict]:
        """The ``k`` images the report shows with their heat map, worst first."""
        return []

    def headline(self, metrics: dict) -> str | None:
        """A line above the summary table, where the task has one."""
        return None

    @staticmethod
    def line(result: dict) -> str:
        """One prediction result as the terminal shows it (after the path)."""
        raise NotImplementedError

    def decision_rule(self, meta: dict, threshold: str | None, operating_point: str | None) -> dict | None:
        """The rule that flags an image (classification's triage); other tasks take none."""
        if threshold or operating_point:
            raise UsageError(
                f"--threshold and --operating-point are for classification checkpoints, not a {self.name} checkpoint"
            )
        return None

    def write_report(self, out_dir, metrics: dict, y, out, meta: dict, shown, context: dict):
        """The HTML report of an evaluation (``covidnet.report``)."""
        from ..report import write_task_report

        return write_task_report(
            out_dir, self.title, self.summary(metrics), self.figures(metrics, y, out), context, errors=shown
        )

    def figures(self, metrics: dict, y, out) -> list:
        """The report's figures: ``(file name, matplotlib Figure, caption)``."""
        return []


def as_tensor(out):
    """A NumPy array (or a tensor) as a float32 torch tensor."""
    import torch

    return out if isinstance(out, torch.Tensor) else torch.as_tensor(np.asarray(out, dtype=np.float32))
