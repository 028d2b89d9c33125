"""A covidnet-cxr3b checkpoint at full size for benchmarks that time a model rather than judge it: one
epoch on a small phantom dataset (latency does not depend on what the weights learnt)."""

from __future__ import annotations

from pathlib import Path

from covidnet.data.build import BuildConfig, SourceSpec, build_dataset
from covidnet.data.synth import SynthConfig, write_phantom_dataset
from covidnet.train import TrainConfig, train


def phantom_checkpoint(work: Path, size: int = 480, n: int = 48) -> tuple[Path, Path]:
    """(checkpoint, dataset) under ``work``."""
    src = write_phantom_dataset(work / "phantoms", SynthConfig(n=n, seed=3, size=int(size * 1.2)), progress=False)
    build_dataset(
        BuildConfig(sources=[SourceSpec("cohen", src, "cohen")], out=work / "ds", size=size, workers=1, progress=False)
    )
    train(
        TrainConfig(
            data=str(work / "ds"),
            out=str(work / "run"),
            epochs=1,
            batch_size=8,
            lr=3e-4,
            progress=False,
            compile="off",
            precise_bn=32,
        )
    )
    return work / "run" / "best.pt", work / "ds"
