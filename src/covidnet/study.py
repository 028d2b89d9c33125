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
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import __version__
from .config import option
from .errors import ConfigError
from .files import atomic_path, write_json
from .metrics.bootstrap import bootstrap_info, finite, format_ci, patient_bootstrap
from .metrics.classification import pairwise_auc, point_metrics, within_source_auc

STUDY_FILE = "study.json"  # the whole study: config, every run's figures, the summary per variant
RESULT_FILE = "result.json"  # one run's figures, written when the run is done
PREDICTIONS_FILE = "predictions.npz"  # one run's test predictions (what the summary is computed from) ...
AUDIT_FILE = "audit.json"  # ... and its audit
ACQUISITION = {"aug_gamma": 0.3, "aug_blur": 1.0, "aug_noise": 0.02}  # fixed before any run, not tuned


@dataclass(frozen=True)
class Variant:
    """One arm of the study: a name, what it changes, and the ``TrainConfig`` settings that make it."""

    name: str
    about: str
    settings: dict = field(default_factory=dict)

    @property
    def needs_lungs(self) -> bool:
        return self.settings.get("lungs", "none") != "none"


VARIANTS = {
    v.name: v
    for v in (
        Variant("baseline", "the recipe as `covidnet train` runs it"),
        Variant(
            "lungs-mask",
            "--lungs mask: pixels outside the dilated lung mask set to their mean",
            {"lungs": "mask"},
        ),
        Variant("lungs-crop", "--lungs crop: the lung bounding box plus a margin, squared", {"lungs": "crop"}),
        Variant("equalize", "--intensity equalize: histogram equalisation per image", {"intensity": "equalize"}),
        Variant("clahe", "--intensity clahe: CLAHE per image", {"intensity": "clahe"}),
        Variant(
            "debias",
            "--debias source: conditional source-adversarial training (weight --debias-weight)",
            {"debias": "source"},
        ),
        Variant(
            "balance",
            "--balance-sources: each class's sources drawn equally often in training",
            {"balance_sources": True},
        ),
        Variant(
            "acquisition",
            "acquisition augmentation: " + ", ".join(f"--{k.replace('_', '-')} {v:g}" for k, v in ACQUISITION.items()),
            dict(ACQUISITION),
        ),
    )
}
DEFAULT_VARIANTS = "baseline,lungs-mask,clahe,debias,balance,acquisition"
# what each variant sets, and what the study sets for every run: not for --train-option
STUDY_SETS = (
    "data",
    "out",
    "seed",
    "epochs",
    "resume",
    "progress",
    "device",
    "lung_model",
    "debias_weight",
    *sorted({k for v in VARIANTS.values() for k in v.settings} | {"debias", "lungs", "intensity"}),
)


@dataclass
class StudyConfig:
    data: str = option(help="a dataset folder written by `covidnet data build`")
    out: str = option(help="study folder: study.json, table.md, index.html, and runs/VARIANT/seedN/")
    variants: str = option(
        DEFAULT_VARIANTS,
        "comma-separated variants, baseline among them (the others are compared with it); known: "
        + ", ".join(VARIANTS),
    )
    seeds: int = option(3, "seeds per variant (0 .. N-1), the same for every variant")
    epochs: int = option(10, "training epochs of every run")
    loso_epochs: int = option(
        0,
        "leave-one-source-out: retrain every run without each source that holds two classes, for this many "
        "epochs, and test on the source held out (0: skip; it multiplies the training time)",
    )
    split: str = option("test", "the split every run is evaluated and audited on", choices=("val", "test"))
    lung_model: str = option(
        "", "lungs-mask, lungs-crop: a `covidnet lungs train` best.pt (default: the dataset's own, data build --lungs)"
    )
    debias_weight: float = option(0.1, "debias: the gradient-reversal weight")
    train_options: list[str] = option(
        default_factory=list,
        flag="--train-option",
        metavar="KEY=VALUE",
        help="a `covidnet train` setting for every run, e.g. lr=3e-4 or size=224 (repeat the flag for more)",
    )
    resamples: int = option(1000, "patient-bootstrap resamples of every interval")
    device: str = option("auto", "auto, cpu, cuda or cuda:N")
    resume: bool = option(False, "continue the study in --out where it stopped")
    progress: bool = option(True, "no progress lines", flag="--quiet", negate=True)

    def to_dict(self) -> dict:
        return asdict(self)

    def names(self) -> list[str]:
        return [v.strip() for v in self.variants.split(",") if v.strip()]


# --resume may name other variants or seeds (their runs are added, the ones done kept) or resamples: a run's
# result depends on none of them
RESUME_MAY_CHANGE = ("resume", "progress", "device", "out", "variants", "seeds", "resamples")


# --- the plan: every run's TrainConfig, checked before any training ------------------------------------------


def _train_options(cfg: StudyConfig) -> dict:
    """``--train-option KEY=VALUE`` as TrainConfig values of the field's type."""
    import typing

    from .train import TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    out = {}
    for text in cfg.train_options:
        key, eq, value = text.partition("=")
        key = key.strip().lstrip("-").replace("-", "_")
        if not eq or key not in names:
            raise ConfigError(
                f"--train-option {text!r}: expected KEY=VALUE with KEY a `covidnet train` setting (e.g. lr=3e-4)"
            )
        if key in STUDY_SETS:
            raise ConfigError(f"--train-option {text!r}: {key} is set by the study itself (its own flag or a variant)")
        kind = hints[key]
        if type(None) in typing.get_args(kind):  # a setting whose default is the task's: ``X | None``
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        try:
            if kind is bool:
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                out[key] = value.lower() in ("true", "1", "yes")
            else:
                out[key] = kind(value)
        except ValueError:
            raise ConfigError(f"--train-option {text!r}: {value!r} is not a {kind.__name__}") from None
    return out


def plan(cfg: StudyConfig) -> list[tuple[Variant, int, object]]:
    """``(variant, seed, TrainConfig)`` of every run, in the order they run; everything ``covidnet train``
    would refuse (a mitigation that needs lung masks on a dataset without a segmenter, ``debias`` where
    no class comes from two sources, an unknown variant or option) is refused here, before any training."""
    from .data.store import open_store
    from .train import TrainConfig, check_training

    names = cfg.names()
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise ConfigError(f"--variants: unknown variant {unknown[0]!r}; known: {', '.join(VARIANTS)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"--variants {cfg.variants!r}: a variant is named twice")
    if "baseline" not in names:
        raise ConfigError("--variants must include baseline: every variant is compared with it")
    if cfg.seeds < 1 or cfg.epochs < 1 or cfg.loso_epochs < 0 or cfg.resamples < 0:
        raise ConfigError("--seeds and --epochs must be at least 1, --loso-epochs and --resamples at least 0")
    store = open_store(cfg.data)
    if not len(store.rows(cfg.split)):
        raise ConfigError(f"{cfg.data}: no images in split {cfg.split!r} to evaluate the runs on")
    common = _train_options(cfg)
    runs = []
    for name in ["baseline", *(n for n in names if n != "baseline")]:
        v = VARIANTS[name]
        tc = TrainConfig(
            data=str(cfg.data),
            out=str(run_dir(cfg, name, 0)),
            epochs=cfg.epochs,
            device=cfg.device,
            debias_weight=cfg.debias_weight,
            lung_model=cfg.lung_model if v.needs_lungs else "",
            progress=cfg.progress,
            **common,
            **v.settings,
        )
        try:
            check_training(tc, store)
        except ConfigError as e:
            raise ConfigError(f"variant {name}: {e}") from None
        if v.needs_lungs and not tc.lung_model:  # the dataset's own, named, so that a derived dataset finds it too
            tc = dataclasses.replace(tc, lung_model=str(store.build_config()["lungs"]))
        runs += [
            (v, seed, dataclasses.replace(tc, seed=seed, out=str(run_dir(cfg, name, seed))))
            for seed in range(cfg.seeds)
        ]
    return runs


def run_dir(cfg: StudyConfig, variant: str, seed: int) -> Path:
    return Path(cfg.out) / "runs" / variant / f"seed{seed}"


def _check_folder(cfg: StudyConfig) -> None:
    """A new study needs a folder without one; ``--resume`` needs the same settings as the study there."""
    out = Path(cfg.out)
    saved = out / STUDY_FILE
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: exists and is not a folder")
    if not cfg.resume:
        if saved.exists() or (out / "runs").exists():
            raise ConfigError(f"{out}: holds a study already; pass --resume to continue it or choose another --out")
        return
    if not saved.is_file():
        raise ConfigError(f"{out}: no study to resume ({STUDY_FILE} not found); start it without --resume")
    try:
        was = json.loads(saved.read_text(encoding="utf-8"))["config"]
        if not isinstance(was, dict):
            raise TypeError("its config is not a JSON object")
    except (ValueError, KeyError, TypeError) as e:  # ValueError: not UTF-8, not JSON
        raise ConfigError(
            f"{saved}: not a readable study file ({type(e).__name__}: {e}); start the study in a new --out"
        ) from None
    for f in dataclasses.fields(StudyConfig):
        if f.name not in RESUME_MAY_CHANGE and was.get(f.name) != getattr(cfg, f.name):
            raise ConfigError(
                f"{out}: --{f.name.replace('_', '-')} was {was.get(f.name)!r} in this study, not "
                f"{getattr(cfg, f.name)!r}; resume with the study's own settings"
            )


# --- one run ------------------------------------------------------------------------------------------------


def _trained(run: Path) -> bool:
    status = run / "run.json"
    return (
        (run / "best.pt").is_file() and status.is_file() and json.loads(status.read_text()).get("state") == "complete"
    )


def _audit_figures(audit: dict) -> dict:
    """What the study keeps of one audit: each test's verdict and the figures it compares."""
    t = audit["tests"]
    out = {"verdicts": {k: v["verdict"] for k, v in t.items()}}
    oc = t["occlusion"]
    if oc.get("auc"):
        out["occlusion_auc"] = oc["auc"]
    at = t["attention_inside_lungs"]
    if at.get("worst"):
        out["attention_worst_excess"] = at["worst"]["excess"]["value"]
    loso = t["leave_one_source_out"]
    if loso.get("per_source"):
        out["loso"] = loso["per_source"]
    return out


def run_one(cfg: StudyConfig, variant: Variant, seed: int, tc, say) -> dict:
    """Train (or resume, or reuse) one run, evaluate it on the split, audit it; its result.json."""
    from .audit import run_audit
    from .evaluate import predict_store
    from .runtime import load
    from .tasks import softmax
    from .train import train

    run = Path(tc.out)
    if (run / RESULT_FILE).is_file() and (run / PREDICTIONS_FILE).is_file():
        return json.loads((run / RESULT_FILE).read_text())
    t0 = time.time()
    if not _trained(run):
        say("training")
        train(dataclasses.replace(tc, resume=(run / "last.pt").is_file()))
    say("evaluating and auditing")
    lm = load(run / "best.pt", cfg.device, tasks=("classification",), backend="torch")
    pred = predict_store(lm, cfg.data, cfg.split)
    probs = softmax(pred.out, lm.meta.get("temperature"))
    with atomic_path(run / PREDICTIONS_FILE) as tmp:
        with open(tmp, "wb") as f:
            np.savez(
                f,
                names=np.array(pred.names),
                y=pred.y,
                probs=probs,
                patients=np.array(pred.patients),
                sources=np.array(pred.sources),
            )
    audit = run_audit(str(run / "best.pt"), cfg.data, cfg.split, cfg.device, seed=0, loso_epochs=cfg.loso_epochs)
    write_json(run / AUDIT_FILE, audit)
    point = point_metrics(pred.y, probs, lm.classes)
    result = {
        "variant": variant.name,
        "seed": seed,
        "run": str(run),
        "classes": lm.classes,
        "n": int(len(pred.y)),
        "accuracy": point["accuracy"],
        "per_class": point["per_class"],
        "audit": {k: v["verdict"] for k, v in audit["tests"].items()},
        "seconds": time.time() - t0,
    }
    write_json(run / RESULT_FILE, result)
    return result


# --- the summary: seed means with patient-bootstrap intervals, and paired differences from the baseline ------


def _figures(y, probs, classes, sources, pairs) -> dict[str, float]:
    """One run's figures on the rows given: accuracy, each class's sensitivity and PPV, each within-source
    pair's AUC, their mean (``within.macro``) and the mean of the pairs with COVID-19 (``within.covid``)."""
    point = point_metrics(y, probs, classes)
    out = {"accuracy": point["accuracy"]}
    for c in classes:
        out[f"{c}.sensitivity"] = point["per_class"][c]["sensitivity"]
        out[f"{c}.ppv"] = point["per_class"][c]["ppv"]
    within, covid = [], []
    positive = classes[-1]  # COVID-19 (positive when binary): the last class, by the project's order
    for p in pairs:
        a, b = classes.index(p["classes"][0]), classes.index(p["classes"][1])
        m = sources == p["source"]
        auc = pairwise_auc(y[m], probs[m], a, b)
        out[_pair_key(p)] = auc
        within.append(auc)
        if positive in p["classes"]:
            covid.append(auc)
    out["within.macro"] = _nanmean(within)
    out["within.covid"] = _nanmean(covid)
    return out


def _nanmean(values) -> float:
    finite = [v for v in values if v == v]
    return float(np.mean(finite)) if finite and len(finite) == len(values) else float("nan")


def _pair_key(p: dict) -> str:
    return f"within:{p['source']}:{p['classes'][0]} vs {p['classes'][1]}"


def _load_predictions(cfg: StudyConfig, results: list[dict]) -> dict:
    preds = {}
    for r in results:
        with np.load(run_dir(cfg, r["variant"], r["seed"]) / PREDICTIONS_FILE) as z:
            preds[(r["variant"], r["seed"])] = {k: z[k] for k in z.files}
    first = next(iter(preds.values()))
    for key, p in preds.items():
        same = all(np.array_equal(p[k], first[k]) for k in ("names", "y", "patients", "sources"))
        if not same:
            raise ConfigError(f"run {key[0]} seed {key[1]} was evaluated on other images than the rest of the study")
    return preds


def summarize(cfg: StudyConfig, results: list[dict]) -> dict:
    """Per variant: every figure's seed mean with its patient-bootstrap interval, its spread over the seeds,
    the seeds' own values, and its paired difference from the baseline; the audit's figures per seed."""
    preds = _load_predictions(cfg, results)
    classes = results[0]["classes"]
    some = next(iter(preds.values()))
    y, patients, sources = some["y"], some["patients"], some["sources"]
    ws = within_source_auc(y, some["probs"], classes, patients, sources, resamples=0)
    pairs = [{"source": p["source"], "classes": p["classes"], "counts": p["counts"]} for p in ws["pairs"]]
    names = [n for n in ["baseline", *cfg.names()] if n in {r["variant"] for r in results}]
    names = list(dict.fromkeys(names))
    seeds = {n: sorted(s for v, s in preds if v == n) for n in names}

    def per_seed(n, idx):
        return [_figures(y[idx], preds[(n, s)]["probs"][idx], classes, sources[idx], pairs) for s in seeds[n]]

    def seed_mean(figs: list[dict]) -> dict:
        return {k: _nanmean([f[k] for f in figs]) for k in figs[0]}

    def flat(idx):
        means = {n: seed_mean(per_seed(n, idx)) for n in names}
        out = {}
        for n in names:
            for k, v in means[n].items():
                out[f"{n}|{k}"] = v
                out[f"{n}|diff|{k}"] = v - means["baseline"][k]
        return out

    cis = patient_bootstrap(flat, patients, cfg.resamples, seed=0)
    everything = np.arange(len(y))
    variants = {}
    for n in names:
        own = per_seed(n, everything)
        figures = {}
        for k in own[0]:
            values = [f[k] for f in own]
            figures[k] = {
                **cis[f"{n}|{k}"],
                "sd_over_seeds": float(np.std(values, ddof=1)) if len(values) > 1 else None,
                "seeds": values,
                "difference_from_baseline": cis[f"{n}|diff|{k}"] if n != "baseline" else None,
            }
        audits = [
            _audit_figures(json.loads((run_dir(cfg, n, r["seed"]) / AUDIT_FILE).read_text()))
            for r in sorted(results, key=lambda r: r["seed"])
            if r["variant"] == n
        ]
        variants[n] = {
            "about": VARIANTS[n].about,
            "settings": VARIANTS[n].settings,
            "seeds": seeds[n],
            "figures": figures,
            "audit": _audit_summary(audits),
        }
    return {
        "classes": classes,
        "n": int(len(y)),
        "n_patients": int(len(np.unique(patients))),
        "pairs": pairs,
        "skipped_pairs": ws["skipped"],
        "within_source_note": ws["note"],
        "bootstrap": {**bootstrap_info(cfg.resamples, 0), "of": "the mean over seeds"},
        "variants": variants,
        "findings": findings(variants, pairs),
    }


def _audit_summary(audits: list[dict]) -> dict:
    """The audit across seeds: each test's verdicts, and the occlusion and attention figures per seed."""
    out = {"verdicts": {}}
    for test in audits[0]["verdicts"]:
        out["verdicts"][test] = [a["verdicts"][test] for a in audits]
    for mode in ("none", "lungs", "border"):
        vals = [a.get("occlusion_auc", {}).get(mode) for a in audits]
        if all(v is not None for v in vals):
            out[f"occlusion_auc_{mode}"] = _spread(vals)
    vals = [a.get("attention_worst_excess") for a in audits]
    if all(v is not None for v in vals):
        out["attention_worst_excess"] = _spread(vals)
    if all(a.get("loso") for a in audits):
        held = sorted(set().union(*(a["loso"] for a in audits)))
        out["loso_external_balanced_accuracy"] = {
            s: _spread([a["loso"].get(s, {}).get("external_balanced_accuracy") for a in audits]) for s in held
        }
        out["loso_drop"] = {s: _spread([_drop(a["loso"].get(s, {})) for a in audits]) for s in held}
    return out


def _drop(r: dict) -> float | None:
    """Balanced accuracy on the other sources' test split minus on the source held out."""
    inside, outside = r.get("internal_balanced_accuracy"), r.get("external_balanced_accuracy")
    return None if inside is None or outside is None else inside - outside


def _spread(values: list) -> dict:
    finite = [float(v) for v in values if v is not None and v == v]
    return {
        "mean": float(np.mean(finite)) if finite else None,
        "sd_over_seeds": float(np.std(finite, ddof=1)) if len(finite) > 1 else None,
        "seeds": values,
    }


def findings(variants: dict, pairs: list) -> list[str]:
    """The sentences a reader needs, from the numbers alone: for each mitigation and each within-source
    figure, whether its interval excludes the baseline's value, and its paired difference."""
    if not pairs:
        return [
            "No source holds two classes in the evaluated split: no within-source figure exists, so the study "
            "cannot say whether a mitigation helps where the source gives nothing away."
        ]
    base = variants["baseline"]["figures"]
    out = []
    keys = ["within.macro", "within.covid", *(_pair_key(p) for p in pairs)]
    any_excludes = False
    for n, v in variants.items():
        if n == "baseline":
            continue
        for k in keys:
            f, b = v["figures"].get(k), base.get(k)
            if not f or f["value"] is None or f["value"] != f["value"] or not f["ci95"]:
                continue
            lo, hi = f["ci95"]
            excludes = not (lo <= b["value"] <= hi)
            d = f["difference_from_baseline"]
            dci = d["ci95"]
            if k == "within.macro" or excludes or (dci and (dci[0] > 0 or dci[1] < 0)):
                any_excludes |= excludes
                out.append(
                    f"{n}: {_label(k)} {format_ci(f)} against the baseline's {b['value']:.3f} "
                    f"({'its interval excludes' if excludes else 'its interval includes'} the baseline's value; "
                    f"paired difference {_signed_ci(d)})."
                )
    if not any_excludes:
        out.append("No mitigation's within-source interval excludes the baseline's value.")
    return out


def _label(key: str) -> str:
    if key == "within.macro":
        return "within-source AUC (mean of the pairs)"
    if key == "within.covid":
        return "within-source COVID-19 AUC (mean of the pairs with COVID-19)"
    if key.startswith("within:"):
        _, source, pair = key.split(":", 2)
        return f"within {source}, {pair} AUC"
    return key


def _signed_ci(m: dict) -> str:
    v, ci = m["value"], m["ci95"]
    if v is None or v != v:
        return "—"
    return f"{v:+.3f}" + (f" ({ci[0]:+.3f} to {ci[1]:+.3f})" if ci else "")


# --- tables and the page ------------------------------------------------------------------------------------


def _cell(f: dict | None) -> str:
    if not f:
        return "—"
    sd = finite(f.get("sd_over_seeds"))
    return format_ci(f) + (f" ±{sd:.3f}" if sd is not None and finite(f.get("value")) is not None else "")


def _spread_cell(s: dict | None) -> str:
    if not s or finite(s["mean"]) is None:
        return "—"
    sd = finite(s["sd_over_seeds"])
    return f"{s['mean']:.3f}" + (f" ±{sd:.3f}" if sd is not None else "")


def _verdicts(vs: list[str]) -> str:
    from collections import Counter

    c = Counter(vs)
    return ", ".join(f"{v} x{k}" if k > 1 else v for v, k in c.items())


def summary_rows(summary: dict) -> tuple[list[str], list[list[str]]]:
    """The study's one table: a row per variant."""
    positive = summary["classes"][-1]
    header = [
        "variant",
        "seeds",
        "accuracy",
        f"{positive} sensitivity",
        f"{positive} PPV",
        "within-source AUC",
        "vs baseline",
        f"within-source {positive} AUC",
        "occlusion AUC: lungs hidden / border only",
        "audit: within / occlusion / attention",
    ]
    loso = any("loso_external_balanced_accuracy" in v["audit"] for v in summary["variants"].values())
    if loso:
        header.append("held-out source: balanced accuracy (drop from the others' test split)")
    rows = []
    for n, v in summary["variants"].items():
        f, a = v["figures"], v["audit"]
        verdicts = " / ".join(
            _verdicts(a["verdicts"].get(t, ["—"])) for t in ("within_source", "occlusion", "attention_inside_lungs")
        )
        row = [
            n,
            str(len(v["seeds"])),
            _cell(f["accuracy"]),
            _cell(f.get(f"{positive}.sensitivity")),
            _cell(f.get(f"{positive}.ppv")),
            _cell(f["within.macro"]),
            _signed_ci(f["within.macro"]["difference_from_baseline"]) if n != "baseline" else "",
            _cell(f["within.covid"]),
            f"{_spread_cell(a.get('occlusion_auc_lungs'))} / {_spread_cell(a.get('occlusion_auc_border'))}",
            verdicts,
        ]
        if loso:
            ext, drop = a.get("loso_external_balanced_accuracy") or {}, a.get("loso_drop") or {}
            row.append(
                "; ".join(f"{s} {_spread_cell(x)} (drop {_spread_cell(drop.get(s))})" for s, x in ext.items()) or "—"
            )
        rows.append(row)
    return header, rows


def pair_rows(summary: dict) -> tuple[list[str], list[list[str]]]:
    """Every within-source pair, a row per variant, with its paired difference from the baseline."""
    header = ["variant", "source", "pair", "images", "AUC (95 % CI) ±SD over seeds", "vs baseline"]
    rows = []
    for p in summary["pairs"]:
        k = _pair_key(p)
        counts = " / ".join(str(p["counts"][c]["images"]) for c in p["classes"])
        for n, v in summary["variants"].items():
            f = v["figures"][k]
            diff = _signed_ci(f["difference_from_baseline"]) if n != "baseline" else ""
            rows.append([n, p["source"], " vs ".join(p["classes"]), counts, _cell(f), diff])
    return header, rows


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    line = lambda cells: "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"  # noqa: E731
    return "\n".join([line(header), line(["---"] * len(header)), *map(line, rows)])


def plot_study(summary: dict):
    """Within-source AUC (seed mean with its interval, each seed a dot) and the occlusion AUCs with the lungs
    hidden and with only the border kept (each seed a mark), per variant, beside chance and the baseline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .audit import OCCLUSION_FAIL, OCCLUSION_WARN

    names = list(summary["variants"])
    x = np.arange(len(names))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(max(8, 1.4 * len(names) + 4), 4.4), dpi=110)
    for key, color, shift, label in (
        ("within.macro", "#1f77b4", -0.12, "all pairs"),
        ("within.covid", "#d62728", 0.12, "pairs with " + summary["classes"][-1]),
    ):
        for i, n in enumerate(names):
            f = summary["variants"][n]["figures"][key]
            if f["value"] is None or f["value"] != f["value"]:
                continue
            lo, hi = f["ci95"] or (f["value"], f["value"])
            ax1.errorbar(
                i + shift,
                f["value"],
                yerr=[[f["value"] - lo], [hi - f["value"]]],
                fmt="o",
                color=color,
                capsize=4,
                label=label if i == 0 else None,
            )
            seeds = [s for s in f["seeds"] if s == s]
            ax1.scatter(np.full(len(seeds), i + shift + 0.06), seeds, s=10, color=color, alpha=0.5)
        base = summary["variants"]["baseline"]["figures"][key]["value"]
        if base == base and base is not None:
            ax1.axhline(base, color=color, ls=":", lw=1)
    ax1.axhline(0.5, color="grey", ls="--", lw=1)
    ax1.set_title("Within-source pairwise AUC\n(mean over seeds, 95 % CI; dots: seeds)", fontsize=10)
    ax1.set_ylabel("AUC")
    ax1.set_ylim(0, 1.02)
    ax1.legend(loc="lower right", fontsize=8)
    for mode, marker, shift, label in (("lungs", "o", -0.1, "lungs hidden"), ("border", "^", 0.1, "border only")):
        for i, n in enumerate(names):
            occ = summary["variants"][n]["audit"].get(f"occlusion_auc_{mode}")
            if occ:
                vals = [v for v in occ["seeds"] if v is not None]
                ax2.scatter(
                    np.full(len(vals), i + shift),
                    vals,
                    color="#2ca02c",
                    marker=marker,
                    s=18,
                    label=label if i == 0 else None,
                )
                ax2.plot([i + shift - 0.1, i + shift + 0.1], [occ["mean"]] * 2, color="#2ca02c", lw=2)
    ax2.axhline(0.5, color="grey", ls="--", lw=1)
    ax2.axhspan(0.5 + OCCLUSION_FAIL, 1.0, color="#d62728", alpha=0.08, lw=0)
    ax2.axhspan(0.5 + OCCLUSION_WARN, 0.5 + OCCLUSION_FAIL, color="#ff7f0e", alpha=0.08, lw=0)
    ax2.set_title(
        "Audit, occlusion: macro AUC with the lungs hidden or only the border\n"
        "(marks: seeds; the higher decides; shaded: warning, fail)",
        fontsize=10,
    )
    ax2.legend(loc="lower right", fontsize=8)
    ax2.set_ylim(0.3, 1.02)
    for ax in (ax1, ax2):
        ax.set_xticks(x, names, rotation=20)
        ax.set_xlim(-0.6, len(names) - 0.4)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def write_outputs(cfg: StudyConfig, out: dict) -> None:
    """study.json, table.md and the HTML page (index.html with study.png)."""
    from .report import html_table, write_page

    folder = Path(cfg.out)
    write_json(folder / STUDY_FILE, out)
    s = out["summary"]
    if s is None:
        return
    head, rows = summary_rows(s)
    phead, prows = pair_rows(s)
    note = (
        f"Test split: {s['n']} images of {s['n_patients']} patients. Cells: the mean over seeds, its 95 % interval "
        f'from {cfg.resamples} bootstrap resamples of patients, ±SD over seeds. "vs baseline": the paired '
        "difference of the within-source AUC, with its interval."
    )
    text = "\n\n".join(
        [
            "# Shortcut study",
            note,
            markdown_table(head, rows),
            "## Within-source pairs",
            markdown_table(phead, prows) if prows else s["within_source_note"] or "",
            "## Findings",
            "\n".join(f"- {f}" for f in s["findings"]),
        ]
    )
    from .files import atomic_write

    atomic_write(folder / "table.md", text + "\n")
    about = "".join(f"<li><b>{n}</b>: {v['about']}</li>" for n, v in s["variants"].items())
    write_page(
        folder,
        "Shortcut study",
        f"<p>{note}</p>"
        + html_table(head, rows, id="summary")
        + "<ul>"
        + "".join(f"<li>{f}</li>" for f in s["findings"])
        + "</ul>",
        figures=[
            (
                "study.png",
                plot_study(s),
                "Left: within-source pairwise AUC, the figure a source shortcut cannot inflate (dotted: the baseline; "
                "dashed: chance). Right: the audit's macro AUC with the lungs hidden and with only the border kept; "
                "the higher of the two decides the occlusion verdict; shaded: warning and fail.",
                "study-plot",
            )
        ],
        context={
            "data": cfg.data,
            "split": cfg.split,
            "seeds": str(cfg.seeds),
            "epochs": str(cfg.epochs),
            "train options": " ".join(cfg.train_options) or "—",
            "version": __version__,
        },
        after=[
            "<section><h2>Within-source pairs</h2>" + html_table(phead, prows, id="pairs") + "</section>",
            f"<section><h2>Variants</h2><ul>{about}</ul></section>",
        ],
    )


# --- the study ----------------------------------------------------------------------------------------------


def run_study(cfg: StudyConfig) -> dict:
    """Run (or continue, ``cfg.resume``) the shortcut study; returns what study.json holds."""
    _check_folder(cfg)
    runs = plan(cfg)  # every refusal before the first run
    folder = Path(cfg.out)
    folder.mkdir(parents=True, exist_ok=True)
    base = {"command": "study shortcuts", "version": __version__, "config": cfg.to_dict()}
    write_json(folder / STUDY_FILE, {**base, "state": "running", "runs": [], "summary": None})
    results = []
    for k, (variant, seed, tc) in enumerate(runs):

        def say(what, k=k, variant=variant, seed=seed):
            if cfg.progress:
                print(f"covidnet study: [{k + 1}/{len(runs)}] {variant.name} seed {seed}: {what}", file=sys.stderr)

        results.append(run_one(cfg, variant, seed, tc, say))
        write_json(folder / STUDY_FILE, {**base, "state": "running", "runs": results, "summary": None})
    out = {**base, "state": "complete", "runs": results, "summary": summarize(cfg, results)}
    write_outputs(cfg, out)
    return out
