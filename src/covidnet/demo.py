"""``covidnet demo``: the whole chain on a fresh machine — phantom radiographs (or real source folders),
a built dataset, a COVID-Net trained on the CPU for a short schedule, an evaluation with its HTML
report — in a few minutes on 2 cores."""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError


@dataclass
class DemoConfig:
    out: str = "demo"
    data: list[str] | None = None  # [READER=]PATH source folders; None: phantoms
    n: int = 300
    size: int = 96
    epochs: int = 10
    seed: int = 0
    overwrite: bool = False
    progress: bool = True


def _say(cfg: DemoConfig, msg: str) -> None:
    if cfg.progress:
        print(f"== {msg}", file=sys.stderr, flush=True)


def run_demo(cfg: DemoConfig) -> dict:
    from .data.build import BuildConfig, SourceSpec, build_dataset
    from .data.synth import SynthConfig, write_phantom_dataset
    from .evaluate import evaluate_checkpoint
    from .train import TrainConfig, train

    out = Path(cfg.out)
    if out.exists() and any(out.iterdir()):
        if not cfg.overwrite:
            raise ConfigError(f"{out}: exists and is not empty; pass --overwrite or choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.data:
        sources = [SourceSpec.parse(d if "=" in d else f"cohen={d}") for d in cfg.data]
    else:
        _say(cfg, f"1/4 drawing {cfg.n} phantom chest radiographs")
        src = write_phantom_dataset(out / "phantoms", SynthConfig(n=cfg.n, seed=cfg.seed, size=max(128, cfg.size)),
                                    progress=cfg.progress)
        sources = [SourceSpec("cohen", src, "phantoms")]
    _say(cfg, "2/4 building the dataset: patient-level splits, preprocessed store")
    build_dataset(BuildConfig(sources=sources, out=out / "dataset", size=cfg.size, val_fraction=0.15,
                              test_fraction=0.2, seed=cfg.seed, progress=cfg.progress))
    _say(cfg, f"3/4 training covidnet-cxr3b for {cfg.epochs} epochs on the CPU")
    train(TrainConfig(data=str(out / "dataset"), out=str(out / "run"), arch="covidnet-cxr3b", epochs=cfg.epochs,
                      batch_size=8, lr=3e-4, seed=cfg.seed, device="cpu", progress=cfg.progress))
    _say(cfg, "4/4 evaluating on the test split")
    metrics = evaluate_checkpoint(str(out / "run" / "best.pt"), data=str(out / "dataset"), split="test",
                                  resamples=500, report=str(out / "report"))
    from .report import write_json

    write_json(out / "report" / "metrics.json", metrics)
    return {"metrics": metrics, "report": str(out / "report" / "index.html")}
