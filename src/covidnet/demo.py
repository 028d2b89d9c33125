"""``covidnet demo``: the whole chain on a fresh machine — phantom radiographs (or real source folders),
a built dataset, a COVID-Net trained on the CPU for a short schedule, an evaluation with its HTML
report — in a few minutes on 2 cores. On phantoms a fifth step scores lung severity (COVIDNet-S):
the generator knows the true geographic and opacity extent of every opacity it drew, writes them as a
severity file, and the classifier is fine-tuned to predict them and evaluated against that truth."""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from .config import option
from .errors import ConfigError


@dataclass
class DemoConfig:
    out: str = option("demo", "folder for everything (default ./demo)")
    data: list[str] | None = option(
        None, "real source folder(s) instead of phantoms (READER defaults to cohen)", metavar="[READER=]PATH"
    )
    n: int = option(300, "phantom images")
    size: int = option(96, "stored image side")
    epochs: int = option(10, "training epochs")
    severity_epochs: int = option(
        6, "phantoms: epochs fine-tuning the classifier into a severity head (default 6; 0 skips the step)"
    )
    seed: int = option(0, "seed of every random choice")
    overwrite: bool = option(False, "replace an earlier demo in --out")
    progress: bool = option(True, "no progress lines", flag="--quiet", negate=True)


def _say(cfg: DemoConfig, msg: str) -> None:
    if cfg.progress:
        print(f"== {msg}", file=sys.stderr, flush=True)


def run_demo(cfg: DemoConfig) -> dict:
    from .data.build import BuildConfig, SourceSpec, build_dataset
    from .data.synth import SynthConfig, write_phantom_dataset, write_severity_file
    from .evaluate import EvalConfig, evaluate_checkpoint
    from .files import write_json
    from .train import TrainConfig, train

    out = Path(cfg.out)
    if out.exists() and any(out.iterdir()):
        if not cfg.overwrite:
            raise ConfigError(f"{out}: exists and is not empty; pass --overwrite or choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    severity = None
    steps = 4 if cfg.data or not cfg.severity_epochs else 5
    if cfg.data:
        sources = [SourceSpec.parse(d if "=" in d else f"cohen={d}") for d in cfg.data]
    else:
        _say(cfg, f"1/{steps} drawing {cfg.n} phantom chest radiographs")
        src = write_phantom_dataset(
            out / "phantoms", SynthConfig(n=cfg.n, seed=cfg.seed, size=max(128, cfg.size)), progress=cfg.progress
        )
        sources = [SourceSpec("cohen", src, "phantoms")]
        # the truth of every image, normal ones (no opacity: 0/8) included, as a COVIDNet-S severity file
        severity = write_severity_file(src, out / "phantom_severity.csv", labels=("normal", "pneumonia", "COVID-19"))
    _say(cfg, f"2/{steps} building the dataset: patient-level splits, preprocessed store")
    build_dataset(
        BuildConfig(
            sources=sources,
            out=out / "dataset",
            size=cfg.size,
            val_fraction=0.15,
            test_fraction=0.2,
            seed=cfg.seed,
            progress=cfg.progress,
            severity=severity,
        )
    )
    _say(cfg, f"3/{steps} training covidnet-cxr3b for {cfg.epochs} epochs on the CPU")
    train(
        TrainConfig(
            data=str(out / "dataset"),
            out=str(out / "run"),
            arch="covidnet-cxr3b",
            epochs=cfg.epochs,
            batch_size=8,
            lr=3e-4,
            seed=cfg.seed,
            device="cpu",
            progress=cfg.progress,
        )
    )
    _say(cfg, f"4/{steps} evaluating on the test split")
    metrics = evaluate_checkpoint(
        EvalConfig(
            str(out / "run" / "best.pt"),
            data=str(out / "dataset"),
            split="test",
            resamples=500,
            report=str(out / "report"),
        )
    )
    write_json(out / "report" / "metrics.json", metrics)
    result = {"metrics": metrics, "report": str(out / "report" / "index.html")}
    if steps == 5:
        result.update(_severity_step(cfg, out, steps))
    return result


def _severity_step(cfg: DemoConfig, out: Path, steps: int) -> dict:
    """Step 5: fine-tune the classifier into a severity head, scored against the phantoms' known extent."""
    from .evaluate import EvalConfig, evaluate_checkpoint
    from .files import write_json
    from .train import TrainConfig, train

    _say(
        cfg,
        f"5/{steps} severity (COVIDNet-S): fine-tuning the classifier to score the extent of the "
        f"opacities for {cfg.severity_epochs} epochs, evaluated against the phantoms' known truth",
    )
    train(
        TrainConfig(
            data=str(out / "dataset"),
            out=str(out / "severity_run"),
            arch="covidnet-cxr3b",
            task="severity",
            init=str(out / "run" / "best.pt"),
            epochs=cfg.severity_epochs,
            batch_size=8,
            lr=3e-4,
            seed=cfg.seed,
            device="cpu",
            progress=cfg.progress,
        )
    )
    sev = evaluate_checkpoint(
        EvalConfig(
            str(out / "severity_run" / "best.pt"),
            data=str(out / "dataset"),
            split="test",
            resamples=500,
            device="cpu",
            report=str(out / "severity_report"),
            errors_shown=8,
        )
    )
    write_json(out / "severity_report" / "metrics.json", sev)
    return {"severity": sev, "severity_report": str(out / "severity_report" / "index.html")}
