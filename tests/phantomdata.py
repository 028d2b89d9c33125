"""Small built datasets of phantom radiographs, for tests that train."""

from pathlib import Path

from covidnet.data.build import BuildConfig, SourceSpec, build_dataset
from covidnet.data.synth import SynthConfig, write_phantom_dataset


def make_dataset(root: Path, n: int, size: int, seed: int = 0) -> Path:
    src = write_phantom_dataset(root / "phantoms", SynthConfig(n=n, seed=seed, size=max(64, size * 2)), progress=False)
    build_dataset(BuildConfig(sources=[SourceSpec("cohen", src, "cohen")], out=root / "ds", size=size,
                              val_fraction=0.2, test_fraction=0.1, workers=1, progress=False))
    return root / "ds"
