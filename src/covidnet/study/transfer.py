"""``covidnet study transfer``: does pretraining help? ImageNet, chest-X-ray self-supervised and random
initialisation, compared on the figures that matter, on the study machinery of ``study shortcuts``.

The arms are fixed here before anything runs: ``efficientnet-lite0`` x {random, imagenet, mean-var, cxr-ssl,
cxr-simclr} and ``covidnet-cxr3b`` x {random, cxr-ssl, cxr-simclr}, each crossed with a **label fraction** (all
the training split's labels, and a tenth drawn by patient: ``--label-fraction``, the same patients for every
arm), trained with the same seeds on the same split or folds. ``cxr-ssl`` is ``covidnet pretrain`` (SimSiam)
and ``cxr-simclr`` the same with ``--ssl-method simclr`` (added a day after the others, once SimSiam's features
had read no better than random weights'), on the training images of the same split or fold, never a film that
is scored, then fine-tuned from its checkpoint (``--init``); one pretraining per architecture, method and fold,
shared by the seeds and fractions. Every arm is
compared with **random initialisation of the same architecture and label fraction** (paired differences with
patient-bootstrap intervals); its figures are the shortcut study's (accuracy, per-class sensitivity and
PPV, COVID-19 AUROC and AUPRC, macro AUROC, the within-source AUCs, the audit's occlusion figures) and its
**convergence**: the validation loss per epoch and the epoch of the best one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .. import __version__
from ..config import option
from ..errors import ConfigError
from ..files import write_json
from .design import Design
from .variants import Variant

# (architecture, initialisation), fixed before any run (2026-12-06); the cxr-simclr arms added on 2026-12-07,
# after SimSiam's and MoCo v2's features had read no better than random weights' (docs/training.md)
TRANSFER_ARMS = (
    ("efficientnet-lite0", "random"),
    ("efficientnet-lite0", "imagenet"),
    ("efficientnet-lite0", "mean-var"),
    ("efficientnet-lite0", "cxr-ssl"),
    ("covidnet-cxr3b", "random"),
    ("covidnet-cxr3b", "cxr-ssl"),
    ("efficientnet-lite0", "cxr-simclr"),
    ("covidnet-cxr3b", "cxr-simclr"),
)
INITS = {
    "random": "random initialisation (the registry's)",
    "imagenet": "Google's ImageNet weights (the [pretrained] extra), first convolution summed over RGB",
    "mean-var": "random weights with the ImageNet weights' per-layer mean and standard deviation (Raghu et al. 2019)",
    "cxr-ssl": "SimSiam on the split's or fold's training films (covidnet pretrain), then fine-tuned",
    "cxr-simclr": "SimCLR on the split's or fold's training films (covidnet pretrain --ssl-method simclr), then "
    "fine-tuned",
}
# the self-supervised initialisations: each one's `covidnet pretrain` settings beside the task's defaults (SimCLR's
# a batch of 32, which gives its in-batch loss 62 negatives, at Adam's 1e-3: those of its probe in docs/training.md)
SSL = {"cxr-ssl": {"ssl_method": "simsiam"}, "cxr-simclr": {"ssl_method": "simclr", "batch_size": 32, "lr": 1e-3}}


def arm_name(arch: str, init: str, fraction: float) -> str:
    return f"{arch}+{init}@{fraction:g}"


@dataclass
class TransferConfig:
    data: str = option(help="a dataset folder written by `covidnet data build`")
    out: str = option(
        help="study folder: study.json, table.md, index.html, runs/ARM/seedN/ and pretrain/ARCH/",
        may_change_on_resume=True,
    )
    arm_list: str = option(
        ",".join(f"{a}+{i}" for a, i in TRANSFER_ARMS),
        "comma-separated ARCH+INIT arms (each with random initialisation of its architecture among them); known: "
        + ", ".join(f"{a}+{i}" for a, i in TRANSFER_ARMS),
        flag="--arms",
        may_change_on_resume=True,
    )
    fractions: str = option("1,0.1", "comma-separated label fractions, each in (0, 1]", may_change_on_resume=True)
    seeds: int = option(1, "seeds per arm (0 .. N-1), the same for every arm", may_change_on_resume=True)
    folds: int = option(
        0,
        "out of fold: this many patient folds, each scored by models (and a pretraining) that never saw its "
        "patients (0: the build's --split)",
    )
    epochs: int = option(10, "training epochs of every fine-tuning run")
    pretrain_epochs: int = option(30, "epochs of each self-supervised pretraining (cxr-ssl, cxr-simclr)")
    split: str = option("test", "the split every run is evaluated on without --folds", choices=("val", "test"))
    train_options: list[str] = option(
        default_factory=list,
        flag="--train-option",
        metavar="KEY=VALUE",
        help="a `covidnet train` setting for every run, e.g. size=224 (repeat the flag for more)",
    )
    resamples: int = option(1000, "patient-bootstrap resamples of every interval", may_change_on_resume=True)
    device: str = option("auto", "auto, cpu, cuda or cuda:N", may_change_on_resume=True)
    resume: bool = option(False, "continue the study in --out where it stopped", may_change_on_resume=True)
    progress: bool = option(True, "no progress lines", flag="--quiet", negate=True, may_change_on_resume=True)
    loso_epochs: int = 0  # the shortcut study's; not run here
    lung_model: str = ""
    debias_weight: float = 0.1

    def to_dict(self) -> dict:
        return asdict(self)

    def pairs(self) -> list[tuple[str, str]]:
        known = {f"{a}+{i}": (a, i) for a, i in TRANSFER_ARMS}
        names = [n.strip() for n in self.arm_list.split(",") if n.strip()]
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ConfigError(f"--arms: unknown arm {unknown[0]!r}; known: {', '.join(known)}")
        return [known[n] for n in names]

    def fraction_list(self) -> list[float]:
        try:
            out = [float(f) for f in self.fractions.split(",") if f.strip()]
        except ValueError:
            out = []
        if not out or any(not 0 < f <= 1 for f in out):
            raise ConfigError(f"--fractions {self.fractions!r}: give label fractions in (0, 1], e.g. 1,0.1")
        return out

    @property
    def design(self) -> Design:
        arms, references = {}, {}
        for f in self.fraction_list():
            for arch, init in self.pairs():
                name = arm_name(arch, init, f)
                settings = {"arch": arch, "init": "random" if init in SSL else init, "label_fraction": f}
                arms[name] = Variant(name, f"{arch}, {INITS[init]}, {f:.0%} of the training labels", settings)
                references[name] = arm_name(arch, "random", f)
        first = next(iter(references.values()))
        return Design("study transfer", "Transfer study", arms, first, references)

    def names(self) -> list[str]:
        return list(self.design.arms)

    def arms(self) -> list[str]:
        """The arms to run, in order (``planning.plan``); an arm without random initialisation of its
        architecture to be compared with is refused."""
        pairs = self.pairs()
        missing = sorted({a for a, _ in pairs} - {a for a, i in pairs if i == "random"})
        if missing:
            raise ConfigError(f"--arms: {missing[0]}+random is missing; every arm is compared with it")
        return self.design.order(self.names())


def pretrain_dir(cfg: TransferConfig, arch: str, fold: int | None, init: str = "cxr-ssl") -> Path:
    """``pretrain/ARCH/FOLD`` for SimSiam (the first method, where studies begun before the others keep it),
    ``pretrain/METHOD/ARCH/FOLD`` for another."""
    method = SSL[init]["ssl_method"]
    top = Path(cfg.out) / "pretrain" / ("" if method == "simsiam" else method)
    return top / arch / (f"fold{fold}" if fold is not None else "split")


def transfer_plan(cfg: TransferConfig) -> tuple[list, dict]:
    """Every fine-tuning run (``(arm, seed, fold, TrainConfig)``, as ``planning.plan`` gives them, the cxr-ssl
    arms initialised from their fold's pretraining) and every pretraining run (``(arch, init, fold) ->
    TrainConfig``), all checked before any training."""
    from ..train import TrainConfig, check_training
    from .planning import plan

    runs = plan(cfg)
    pretrains = {}
    for k, (v, seed, fold, tc) in enumerate(runs):
        arch, init = v.name.split("@")[0].split("+")
        if init not in SSL:
            continue
        key = (arch, init, fold)
        if key not in pretrains:
            ssl = TrainConfig(
                data=tc.data,
                out=str(pretrain_dir(cfg, arch, fold, init)),
                task="self-supervised",
                arch=arch,
                epochs=cfg.pretrain_epochs,
                size=tc.size,
                in_channels=tc.in_channels,
                device=cfg.device,
                progress=cfg.progress,
                **SSL[init],
            )
            check_training(ssl)
            pretrains[key] = ssl
        runs[k] = (v, seed, fold, dataclasses.replace(tc, init=str(Path(pretrains[key].out) / "best.pt")))
    return runs, pretrains


def pretrain(ssl, say) -> None:
    """A pretraining run to its end: started, resumed from its last.pt, or found complete."""
    import json

    from ..train import train

    out = Path(ssl.out)
    status = out / "run.json"
    if (out / "best.pt").is_file() and status.is_file() and json.loads(status.read_text()).get("state") == "complete":
        return
    say(f"self-supervised pretraining of {ssl.arch} ({ssl.epochs} epochs)")
    train(dataclasses.replace(ssl, resume=(out / "last.pt").is_file()))


def run_transfer(cfg: TransferConfig) -> dict:
    """Run (or continue, ``cfg.resume``) the transfer study; returns what study.json holds."""
    from .planning import check_folder
    from .runs import run_all
    from .summary import summarize

    check_folder(cfg)
    runs, pretrains = transfer_plan(cfg)  # every refusal before the first run

    def pretrain_first(variant, fold, say):
        arch, init = variant.name.split("@")[0].split("+")
        if init in SSL:
            pretrain(pretrains[(arch, init, fold)], say)

    base, results = run_all(cfg, runs, before=pretrain_first)
    summary = summarize(cfg, results)
    summary["convergence"] = convergence_summary(results)
    out = {**base, "state": "complete", "runs": results, "summary": summary}
    write_transfer_outputs(cfg, out)
    return out


def convergence_summary(results: list[dict]) -> dict:
    """Per arm: the validation loss per epoch (mean over its runs, seeds and folds) and the epoch of the best
    checkpoint (mean and each run's)."""
    out = {}
    for name in dict.fromkeys(r["variant"] for r in results):
        runs = [r["convergence"] for r in results if r["variant"] == name]
        epochs = min(len(c["val_loss"]) for c in runs)
        curve = np.mean([c["val_loss"][:epochs] for c in runs], axis=0)
        best = [c["best_epoch"] for c in runs if c["best_epoch"] is not None]
        out[name] = {
            "val_loss": [float(v) for v in curve],
            "best_epoch": float(np.mean(best)) if best else None,
            "best_epochs": best,
        }
    return out


TABLE_FIGURES = (
    ("accuracy", "accuracy"),
    ("COVID-19.sensitivity", "COVID-19 sensitivity"),
    ("COVID-19.ppv", "COVID-19 PPV"),
    ("COVID-19.auroc", "COVID-19 AUROC"),
    ("COVID-19.auprc", "COVID-19 AUPRC"),
    ("site.covid", "within-site COVID-19 AUC (pooled)"),
    ("within.covid", "within-source COVID-19 AUC"),
)


def transfer_rows(summary: dict) -> tuple[list[str], list[list[str]]]:
    """The table: a row per arm; each figure with its interval, then its paired difference from random
    initialisation of the same architecture and fraction; the occlusion figure and the epochs to the best."""
    from .summary import signed_ci

    header = ["arm", *(label for _, label in TABLE_FIGURES), "Δ within-site COVID-19 vs random",
              "Δ within-source COVID-19 vs random",
              "occlusion: lungs hidden", "epochs to best"]  # fmt: skip
    rows = []
    for name, v in summary["variants"].items():
        f = v["figures"]
        cells = [_cell(f.get(key)) for key, _ in TABLE_FIGURES]
        diff = f.get("within.covid", {}).get("difference_from_baseline")
        site_diff = f.get("site.covid", {}).get("difference_from_baseline")
        occ = v["audit"].get("occlusion_auc_lungs") or {}
        conv = summary.get("convergence", {}).get(name, {})
        rows.append(
            [
                name,
                *cells,
                signed_ci(site_diff) if site_diff else ("(reference)" if not diff else "—"),
                signed_ci(diff) if diff else "(reference)",
                f"{occ['mean']:.2f}" if occ.get("mean") is not None else "",
                f"{conv['best_epoch']:.1f}" if conv.get("best_epoch") is not None else "",
            ]
        )
    return header, rows


def _cell(f: dict | None) -> str:
    from ..metrics.bootstrap import format_ci

    return format_ci(f) if f and f.get("value") == f.get("value") and f.get("value") is not None else "—"


def plot_transfer(summary: dict):
    """Left: the validation loss per epoch of every arm (mean over runs). Right: the within-source COVID-19
    AUC of every arm with its interval, beside chance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary["variants"])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(max(10, 1.1 * len(names) + 6), 4.6), dpi=110)
    for name in names:
        curve = summary.get("convergence", {}).get(name, {}).get("val_loss")
        if curve:
            ax1.plot(np.arange(1, len(curve) + 1), curve, marker="o", ms=3, label=name,
                     ls="-" if name.endswith("@1") else "--")  # fmt: skip
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("validation loss")
    ax1.set_title("Convergence (mean over seeds and folds)", fontsize=10)
    ax1.legend(fontsize=7)
    for i, name in enumerate(names):
        f = summary["variants"][name]["figures"].get("within.covid")
        if f and f["value"] == f["value"] and f["value"] is not None:
            lo, hi = f["ci95"] or (f["value"], f["value"])
            ax2.errorbar(i, f["value"], yerr=[[f["value"] - lo], [hi - f["value"]]], fmt="o", capsize=4)
    ax2.axhline(0.5, color="grey", ls="--", lw=1)
    ax2.set_xticks(np.arange(len(names)), names, rotation=35, ha="right", fontsize=8)
    ax2.set_ylim(0, 1.02)
    ax2.set_title("Within-source COVID-19 AUC (95 % CI)", fontsize=10)
    fig.tight_layout()
    return fig


def write_transfer_outputs(cfg: TransferConfig, out: dict) -> None:
    """study.json, table.md and the page (index.html with transfer.png)."""
    from ..files import atomic_write
    from ..report import html_table, write_page
    from .page import markdown_table
    from .planning import STUDY_FILE

    folder = Path(cfg.out)
    write_json(folder / STUDY_FILE, out)
    s = out["summary"]
    head, rows = transfer_rows(s)
    where = f"out of fold ({cfg.folds} folds by patient)" if cfg.folds else f"the {cfg.split} split"
    note = (
        f"{s['n']} images of {s['n_patients']} patients, {where}. Cells: the mean over seeds with its 95 % interval "
        f"from {cfg.resamples} bootstrap resamples of patients; Δ: the paired difference from random "
        "initialisation of the same architecture and label fraction."
    )
    text = "\n\n".join(["# Transfer study", note, markdown_table(head, rows), "## Findings",
                        "\n".join(f"- {f}" for f in s["findings"])])  # fmt: skip
    atomic_write(folder / "table.md", text + "\n")
    write_page(
        folder,
        "Transfer study",
        f"<p>{note}</p>" + html_table(head, rows, id="summary"),
        figures=[
            (
                "transfer.png",
                plot_transfer(s),
                "Convergence and the within-source COVID-19 AUC per arm.",
                "transfer-plot",
            )
        ],  # fmt: skip
        context={
            "data": cfg.data,
            "folds": str(cfg.folds),
            "seeds": str(cfg.seeds),
            "epochs": str(cfg.epochs),
            "pretrain epochs": str(cfg.pretrain_epochs),
            "version": __version__,
        },  # fmt: skip
    )
