"""Classification: COVIDx's classes (normal, pneumonia, COVID-19; or negative, positive with ``--binary``),
softmax, cross-entropy; what a checkpoint without a ``task`` key is.

Its training options, which no other task has:

* the reference's **rebalancing**: ``--covid-percent`` of every batch drawn from COVID-19
  (``train.sampler``) and **class weights** in the loss (``--class-weights``: the reference's COVID-19 x4,
  balanced, none, or one number per class);
* ``--balance-sources``: within each class, every source drawn equally often, or tempered
  (``--balance-temper``: each image's draw weighs its class-and-source group's size to the power minus alpha);
* ``--group-dro``: the worst (class, source) group's loss minimised, with online group weights (``dro``);
* ``--debias source``: a source adversary on the pooled features through gradient reversal (``debias``).

And its **decision rule**: softmax with the fitted temperature, the triage threshold (``--threshold``, or
the operating point ``covidnet calibrate`` stored), used by eval, calibrate, predict and the service.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..data.records import BINARY_CLASSES, CLASSES, positive_class
from ..errors import ConfigError
from ..metrics.bootstrap import format_ci
from .base import as_tensor
from .image import ImageTask

# --- the decision rule --------------------------------------------------------------


def softmax(logits, temperature: float | None = None) -> np.ndarray:
    """Class probabilities (N, K) float32 from logits (N, K), after temperature scaling when fitted.
    Every path that turns logits into probabilities (eval, calibrate, predict, serve) calls this."""
    z = np.asarray(logits, dtype=np.float64) / (temperature or 1.0)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def triage_rule(meta: dict, threshold: str | None, operating_point: str | None = None) -> dict | None:
    """``--threshold CLASS=P`` if given; else the operating point stored in the checkpoint (which must be
    the one ``--operating-point`` names, when given); else None."""
    classes = meta["classes"]
    if threshold and operating_point:
        raise ConfigError("give --threshold or --operating-point, not both")
    stored = meta.get("operating_point")
    if operating_point and (not stored or stored["target"] != operating_point):
        have = f"it has {stored['target']}" if stored else "it has none"
        raise ConfigError(
            f"the checkpoint has no operating point {operating_point} ({have}); choose it on validation "
            f"data first: covidnet calibrate --checkpoint CKPT --data DIR --operating-point {operating_point}"
        )
    if threshold:
        name, _, value = threshold.rpartition("=")
        try:
            t = float(value)
        except ValueError:
            t = -1.0
        if name not in classes or not 0 <= t <= 1:
            raise ConfigError(
                f"--threshold {threshold!r}: write CLASS=P with CLASS one of {', '.join(classes)} and 0 <= P <= 1"
            )
        return {"class": name, "threshold": t, "rule": f"--threshold {threshold}"}
    if stored:
        return {
            "class": stored["class"],
            "threshold": stored["threshold"],
            "rule": f"operating point {stored['target']} (validation)",
        }
    return None


def decide(probs: np.ndarray, classes: list[str], rule: dict | None) -> dict:
    """One image's result from its probabilities: label, every class's probability, triage."""
    out = {"label": classes[int(np.argmax(probs))], "probabilities": {c: float(v) for c, v in zip(classes, probs)}}
    if rule:
        pc = float(probs[classes.index(rule["class"])])
        out["triage"] = {**rule, "probability": pc, "flag": pc >= rule["threshold"]}
    return out


# the training options only classification has, as TrainConfig names them, with their neutral values
TRAINING = {
    "covid_percent": 0.0,
    "class_weights": "none",
    "debias": "none",
    "debias_weight": 0.1,
    "balance_sources": False,
    "balance_temper": 1.0,
    "group_dro": False,
    "dro_step": 0.01,
    "dro_adjustment": 1.0,
    "label_fraction": 1.0,
}


class ClassificationTask(ImageTask):
    name = "classification"
    options = (*ImageTask.options, "binary", *TRAINING)
    defaults = {**ImageTask.defaults, "covid_percent": 0.3, "class_weights": "reference"}
    reads_label_files = True

    def __init__(self, classes: Sequence[str] = CLASSES, **training):
        """``training``: the training options (``TRAINING``, as ``TrainConfig`` names them); their neutral
        values where not given (an evaluation's task needs none)."""
        self.outputs = list(classes)
        for name, value in {**TRAINING, **training}.items():
            setattr(self, name, value)
        self.weights = None  # the loss's class weights, once the training split is known
        self.adversary = None  # --debias source: the source adversary, with the model
        self.dro = None  # --group-dro: the group weights, with the training split
        self.groups = None  # --balance-sources: each training image's source

    @classmethod
    def from_config(cls, cfg) -> ClassificationTask:
        if cfg.debias != "none" and cfg.debias_weight <= 0:
            raise ConfigError("--debias source needs a --debias-weight above 0")
        if not 0 <= cfg.covid_percent < 1:
            raise ConfigError(f"--covid-percent must be in [0, 1), not {cfg.covid_percent}")
        if not 0 <= cfg.balance_temper <= 1:
            raise ConfigError(
                f"--balance-temper must be in [0, 1] (1: balance, 0: the natural mix), not {cfg.balance_temper}"
            )
        if cfg.balance_temper != 1.0 and not cfg.balance_sources:
            raise ConfigError("--balance-temper tempers --balance-sources: give both")
        if cfg.group_dro and (cfg.debias != "none" or cfg.class_weights != "none"):
            raise ConfigError(
                "--group-dro weighs the (class, source) groups itself: give --class-weights none, and no --debias"
            )
        if not 0 < cfg.label_fraction <= 1:
            raise ConfigError(
                f"--label-fraction must be in (0, 1], a share of the training patients, not {cfg.label_fraction}"
            )
        if cfg.group_dro and (cfg.dro_step <= 0 or cfg.dro_adjustment < 0):
            raise ConfigError("--dro-step must be positive and --dro-adjustment at least 0")
        return cls(BINARY_CLASSES if cfg.binary else CLASSES, **{k: getattr(cfg, k) for k in TRAINING})

    # --- data ---------------------------------------------------------------------------------------

    def rows(self, store, split):
        """A split's rows; with ``--label-fraction`` below 1, the training split's rows of that share of its
        patients (``labelled_share``), the validation and test splits whole."""
        rows = store.rows(split)
        return (
            labelled_share(store, rows, self.label_fraction) if split == "train" and self.label_fraction < 1 else rows
        )

    def targets(self, store, rows):
        return store.labels(rows, binary=tuple(self.outputs) == BINARY_CLASSES)

    def check(self, cfg, store, train_rows):
        from .debias import source_index, source_targets

        super().check(cfg, store, train_rows)
        class_weights(self.class_weights, np.zeros(0, np.int64), self.outputs)  # a malformed --class-weights
        labels = self.targets(store, train_rows)
        if self.debias == "source":
            source_targets(store.sources(train_rows), labels)
        if self.balance_sources:
            source_index(store.sources(train_rows), labels, "--balance-sources")

    def setup(self, run):
        import torch

        from .debias import source_index, source_targets

        self.weights = class_weights(self.class_weights, run.y_train, self.outputs)
        sources = run.store.sources(run.train_rows)
        self.groups = source_index(sources, run.y_train, "--balance-sources")[0] if self.balance_sources else None
        if self.group_dro:
            from .dro import GroupDRO, group_index

            groups, _ = group_index(run.y_train, np.array(sources))
            self.dro = GroupDRO(groups, self.dro_step, self.dro_adjustment, run.device)
        if self.debias == "source":
            index, weight, names = source_targets(sources, run.y_train)
            self.sources, self.adv_weight = (
                torch.from_numpy(index).to(run.device),
                torch.from_numpy(weight).to(run.device),
            )
            self.adv_shape = (len(self.outputs), len(names))
            self.adv = {"correct": 0.0, "n": 0.0}

    # --- the step -----------------------------------------------------------------------------------

    def loss(self, out, y):
        import torch.nn.functional as F

        return F.cross_entropy(out, y, weight=None if self.weights is None else self.weights.to(out.device))

    def agreement(self, out, y):
        return (out.argmax(1) == y).sum()

    def trainable(self, model):
        net, params = super().trainable(model)
        if self.debias != "source":
            return net, params
        from .debias import Debiased, SourceAdversary

        if self.adversary is None:
            self.adversary = SourceAdversary(model.num_features, *self.adv_shape).to(next(model.parameters()).device)
        return Debiased(model, self.adversary, self.debias_weight), params + list(self.adversary.parameters())

    def sampling(self, run):
        rebalance = {"covid_class": self.positive, "covid_percent": self.covid_percent} if self.covid_percent else {}
        return {**rebalance, "groups": self.groups, "temper": self.balance_temper}

    def start_epoch(self, run, batches):
        import torch

        if self.debias == "source":  # the adversary's loss is scaled by the mean weight of the images drawn
            drawn = torch.from_numpy(run.train_pos[np.concatenate(batches)]).to(run.device)
            self.adv_per_image = float(self.adv_weight[drawn].mean())

    def batch(self, run, pos, params, hosts):
        import torch

        b = super().batch(run, pos, params, hosts)
        if self.debias == "source" or self.group_dro:
            b["pos"] = torch.from_numpy(pos).to(run.device)
        return b

    def step(self, net, batch):
        if self.group_dro:
            import torch.nn.functional as F

            out = net(batch["x"]).float()
            loss = self.dro.loss(out, batch["y"], batch["pos"])
            return loss, {"acc": self.agreement(out.detach(), batch["y"]), "loss": F.cross_entropy(out, batch["y"])}
        if self.debias != "source":
            return super().step(net, batch)
        from .debias import adversary_loss

        out, source_logits = net(batch["x"], batch["y"])
        loss = self.loss(out.float(), batch["y"])
        pos = batch["pos"]
        adv_loss, correct, n = adversary_loss(
            source_logits, self.sources[pos], self.adv_weight[pos], self.adv_per_image
        )
        self.adv["correct"] += correct.detach()
        self.adv["n"] += n.detach()
        # the reversal inside Debiased turns the adversary's loss into the backbone's penalty
        return loss + adv_loss, {"acc": self.agreement(out.detach(), batch["y"]), "loss": loss.detach()}

    def after_epoch(self, run):
        mix = np.bincount(run.y_train[run.seen], minlength=len(self.outputs)) / max(len(run.seen), 1)
        row = {f"mix_{c}": float(m) for c, m in zip(self.outputs, mix)}
        text = " | class mix " + " ".join(f"{c} {m:.0%}" for c, m in zip(self.outputs, mix))
        if self.debias == "source":  # how well the adversary still tells the sources apart within a class
            correct, n = run.dist.all_sum([float(self.adv["correct"]), float(self.adv["n"])], run.device)
            row = {"train_adversary_acc": correct / n if n > 0 else float("nan"), **row}
            text = f" | adversary acc {row['train_adversary_acc']:.3f}" + text
            self.adv = {"correct": 0.0, "n": 0.0}
        if self.dro is not None:  # the worst group's adjusted batch loss this epoch, and the weights' spread
            worst = run.dist.all_sum([float(self.dro.worst)], run.device)[0] / run.dist.world
            row = {"train_worst_group_loss": worst, "dro_max_weight": float(self.dro.q.max()), **row}
            text = f" | worst group {worst:.3f}" + text
            self.dro.worst.zero_()
        return row, text

    def state(self):
        state = {"adversary": self.adversary.state_dict()} if self.adversary is not None else {}
        return {**state, "group_dro": self.dro.state_dict()} if self.dro is not None else state

    def load_state(self, ckpt):
        if self.adversary is not None:
            self.adversary.load_state_dict(ckpt["adversary"])
        if self.dro is not None:
            self.dro.load_state_dict(ckpt["group_dro"])

    def meta(self):
        return {"task": self.name, "classes": list(self.outputs)}

    @property
    def positive(self) -> int:
        return self.outputs.index(positive_class(self.outputs))

    def decision_rule(self, meta, threshold, operating_point):
        return triage_rule(meta, threshold, operating_point)

    def final(self, row):
        return f"val accuracy {row['val_acc']:.3f}"

    def write_report(self, out_dir, metrics, y, out, meta, shown, context):
        from ..report import write_report

        return write_report(
            out_dir, metrics, y, self.probabilities(out, meta), self.outputs, errors=shown, context=context
        )

    def validation(self, y, out):
        from ..metrics.classification import training_metrics

        return training_metrics(y, as_tensor(out), self.outputs)

    def log(self, val):
        row = {
            "val_acc": val["accuracy"],
            **{f"val_sens_{c}": val["sensitivity"][c] for c in self.outputs},
            **{f"val_ppv_{c}": val["ppv"][c] for c in self.outputs},
        }
        return row, f"acc {val['accuracy']:.3f}"

    def probabilities(self, out: np.ndarray, meta: dict) -> np.ndarray:
        return softmax(out, meta.get("temperature"))

    def evaluate(self, y, out, patients, sources, meta, resamples, seed, sites=None, views=None):
        from ..metrics.classification import compute_metrics
        from ..metrics.within import within_site_auc

        probs = self.probabilities(out, meta)
        metrics = compute_metrics(y, probs, self.outputs, patients, sources, resamples, seed)
        metrics["within_site"] = within_site_auc(
            y, probs, self.outputs, patients, sources, sites, views, resamples, seed
        )
        return {**metrics, "temperature": meta.get("temperature"), "classes": list(self.outputs)}

    def results(self, out, meta, rule):
        return [{"task": self.name, **decide(p, self.outputs, rule)} for p in self.probabilities(out, meta)]

    def cam_outputs(self, result):
        return [(self.outputs.index(result["label"]), None)]

    def headline(self, metrics):
        t = metrics.get("temperature")
        return f"accuracy {format_ci(metrics['accuracy'])}   ECE {metrics['ece']:.3f}" + (
            f"   temperature {t:.3f}" if t else ""
        )

    @staticmethod
    def line(result):
        probs = " ".join(f"{c} {p:.3f}" for c, p in result["probabilities"].items())
        tri = ""
        if "triage" in result:
            t = result["triage"]
            tri = (
                f"  triage: {'FLAG' if t['flag'] else 'no flag'} ({t['class']} {t['probability']:.3f} "
                f"vs {t['threshold']:.3f})"
            )
        return f"{result['label']}  [{probs}]{tri}"

    def summary(self, metrics):
        from ..metrics.classification import METRICS

        rows = [[c, *(format_ci(metrics["per_class"][c][k]) for k in METRICS)] for c in self.outputs]
        rows.append(["macro", *(format_ci(metrics["macro"][k]) for k in METRICS)])
        return ["class", "sensitivity", "PPV", "NPV", "specificity", "F1", "AUC"], rows

    def disagreements(self, y, out, meta, k):
        probs = self.probabilities(out, meta)
        pred = probs.argmax(1)
        wrong = np.flatnonzero(pred != y)
        worst = wrong[np.argsort(-probs[wrong, pred[wrong]])][:k]
        return [
            {
                "index": int(i),
                "output": int(pred[i]),
                "true": self.outputs[y[i]],
                "pred": self.outputs[pred[i]],
                "confidence": float(probs[i, pred[i]]),
            }
            for i in worst
        ]


def labelled_share(store, rows: np.ndarray, fraction: float) -> np.ndarray:
    """The rows of a ``fraction`` of the patients of ``rows``, drawn by patient and stratified by class: within
    each class (a patient's first image's), the patients first in the order of a hash of their id, at least
    one. The hash, not a seed: every run, arm and seed that asks for the same fraction of the same split gets
    the same patients, and a smaller fraction's patients are among a larger one's."""
    import hashlib

    patients = store.patients(rows)
    first: dict[str, str] = {}
    for r, p in zip(rows, patients):
        first.setdefault(p, store.index[r]["label"])
    keep = set()
    for label in sorted(set(first.values())):
        group = sorted((p for p, c in first.items() if c == label), key=lambda p: hashlib.sha1(p.encode()).hexdigest())
        keep.update(group[: max(1, round(fraction * len(group)))])
    return rows[np.array([p in keep for p in patients], dtype=bool)]


def class_weights(spec: str, labels: np.ndarray, classes: Sequence[str]):
    """The loss's class weights of ``--class-weights`` (None: unweighted), from the training labels."""
    import torch

    k = len(classes)
    if spec == "none":
        return None
    if spec == "reference":  # the reference's covid_weight=4
        return torch.tensor([4.0 if c == positive_class(classes) else 1.0 for c in classes])
    if spec == "balanced":
        counts = np.bincount(labels, minlength=k).astype(float)
        return torch.tensor(counts.sum() / (k * np.maximum(counts, 1)), dtype=torch.float32)
    try:
        w = [float(v) for v in spec.split(",")]
    except ValueError:
        w = []
    if len(w) != k or min(w, default=0) <= 0:
        raise ConfigError(
            f"--class-weights {spec!r}: give reference, none, balanced, or {k} positive numbers ({', '.join(classes)})"
        )
    return torch.tensor(w, dtype=torch.float32)
