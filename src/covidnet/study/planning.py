"""The study's plan: its config (``StudyConfig``), every run's ``TrainConfig`` built and checked before any
training (``plan``), the run folders (``run_dir``), and the rules for a study folder: a new study needs an
empty one, ``--resume`` the same settings as the study there but for those declared ``may_change_on_resume``
(``check_folder``, ``config.check_resumed``): a run's result depends on none of them."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from ..config import check_resumed, option
from ..errors import ConfigError
from .design import Design
from .variants import DEFAULT_VARIANTS, SHORTCUTS, VARIANTS, Variant

STUDY_FILE = "study.json"  # the whole study: config, every run's figures, the summary per variant
# what the study sets for every run: not for --train-option (nor is what an arm sets, ``Design.sets``)
STUDY_SETS = ("data", "out", "seed", "epochs", "resume", "progress", "device", "lung_model", "debias_weight")


@dataclass
class StudyConfig:
    data: str = option(help="a dataset folder written by `covidnet data build`")
    out: str = option(
        help="study folder: study.json, table.md, index.html, and runs/VARIANT/seedN/", may_change_on_resume=True
    )
    variants: str = option(
        DEFAULT_VARIANTS,
        "comma-separated variants, baseline among them (the others are compared with it); known: "
        + ", ".join(VARIANTS),
        may_change_on_resume=True,  # --resume may add variants: the runs done are kept
    )
    seeds: int = option(3, "seeds per variant (0 .. N-1), the same for every variant", may_change_on_resume=True)
    epochs: int = option(10, "training epochs of every run")
    loso_epochs: int = option(
        0,
        "leave-one-source-out: retrain every run without each source that holds two classes, for this many "
        "epochs, and test on the source held out (0: skip; it multiplies the training time)",
    )
    split: str = option("test", "the split every run is evaluated and audited on", choices=("val", "test"))
    folds: int = option(
        0,
        "out of fold: deal the dataset's images into this many folds by patient (stratified by class and site), "
        "train each fold's model on the others and score the fold, so every image is scored by a model that never "
        "saw its patient (0: evaluate on the build's own --split)",
    )
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
    resamples: int = option(1000, "patient-bootstrap resamples of every interval", may_change_on_resume=True)
    device: str = option("auto", "auto, cpu, cuda or cuda:N", may_change_on_resume=True)
    resume: bool = option(False, "continue the study in --out where it stopped", may_change_on_resume=True)
    progress: bool = option(True, "no progress lines", flag="--quiet", negate=True, may_change_on_resume=True)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def design(self) -> Design:
        """The kind of study this config runs: the shortcut study's variants, compared with the baseline."""
        return SHORTCUTS

    def names(self) -> list[str]:
        return [v.strip() for v in self.variants.split(",") if v.strip()]

    def arms(self) -> list[str]:
        """The variants to run, in the order they run (the reference first); an unknown or repeated variant,
        or a list without the reference, is refused."""
        design, names = self.design, self.names()
        unknown = [n for n in names if n not in design.arms]
        if unknown:
            raise ConfigError(f"--variants: unknown variant {unknown[0]!r}; known: {', '.join(design.arms)}")
        if len(set(names)) != len(names):
            raise ConfigError(f"--variants {self.variants!r}: a variant is named twice")
        if design.reference not in names:
            raise ConfigError(f"--variants must include {design.reference}: every variant is compared with it")
        return design.order(names)


def _train_options(cfg: StudyConfig) -> dict:
    """``--train-option KEY=VALUE`` as TrainConfig values of the field's type."""
    import typing

    from ..train import TrainConfig

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
        if key in STUDY_SETS or key in cfg.design.sets:
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


def plan(cfg: StudyConfig) -> list[tuple[Variant, int, int | None, object]]:
    """``(variant, seed, fold, TrainConfig)`` of every run, in the order they run (the reference first; ``fold``
    None without ``--folds``); everything ``covidnet train`` would refuse (a mitigation that needs lung masks
    on a dataset without a segmenter, ``debias`` where no class comes from two sources, an unknown variant or
    option, folds the dataset cannot fill) is refused here, before any training. With ``--folds`` the fold
    datasets are derived in the study's folder (``study.folds``) once every setting has been checked."""
    from ..data.store import open_store
    from ..train import TrainConfig, check_training
    from .folds import check_folds, fold_datasets

    names = cfg.arms()
    if cfg.seeds < 1 or cfg.epochs < 1 or cfg.loso_epochs < 0 or cfg.resamples < 0:
        raise ConfigError("--seeds and --epochs must be at least 1, --loso-epochs and --resamples at least 0")
    store = open_store(cfg.data)
    if cfg.folds:
        check_folds(store, cfg.folds, cfg.data)
    elif not len(store.rows(cfg.split)):
        raise ConfigError(f"{cfg.data}: no images in split {cfg.split!r} to evaluate the runs on")
    common = _train_options(cfg)
    runs = []
    for name in names:
        v = cfg.design.arms[name]
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
        runs += [(v, seed, tc) for seed in range(cfg.seeds)]
    data = fold_datasets(store, cfg.folds, Path(cfg.out) / "folds") if cfg.folds else [Path(cfg.data)]
    for path in data[1 if not cfg.folds else 0 :]:  # each fold's own splits: a class or a source may be missing
        for v, _, tc in runs[:: cfg.seeds]:
            try:
                check_training(dataclasses.replace(tc, data=str(path)))
            except ConfigError as e:
                raise ConfigError(f"variant {v.name}, {path.name}: {e}") from None
    folds = range(cfg.folds) if cfg.folds else [None]
    return [
        (v, seed, k, dataclasses.replace(tc, seed=seed, data=str(data[k or 0]), out=str(run_dir(cfg, v.name, seed, k))))
        for v, seed, tc in runs
        for k in folds
    ]


def run_dir(cfg: StudyConfig, variant: str, seed: int, fold: int | None = None) -> Path:
    """A run's folder: ``runs/VARIANT/seedN``, and ``/foldK`` with ``--folds``."""
    path = Path(cfg.out) / "runs" / variant / f"seed{seed}"
    return path / f"fold{fold}" if fold is not None else path


def check_folder(cfg: StudyConfig) -> None:
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
    if not was.get("lung_model") and not _used_lungs(cfg, was):  # no run has read one: it may be named now
        was = {**was, "lung_model": cfg.lung_model}
    check_resumed(cfg, was, str(out), "study")


def _used_lungs(cfg: StudyConfig, was: dict) -> bool:
    """Whether the study ``was`` (its saved config) has a variant that reads a lung model: if not, ``--resume``
    may name ``--lung-model`` with the lungs variants it adds, as no run done so far depends on it."""
    names = [n for n in str(was.get("variants", "")).split(",") if n]
    return any(cfg.design.arms[n].needs_lungs if n in cfg.design.arms else True for n in names)
