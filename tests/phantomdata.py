"""Small built datasets of phantom radiographs, for tests that train."""

from pathlib import Path

from covidnet.data.build import BuildConfig, SourceSpec, build_dataset
from covidnet.data.synth import SynthConfig, write_phantom_dataset, write_severity_file


def make_dataset(root: Path, n: int, size: int, seed: int = 0, severity: bool = False) -> Path:
    """``severity``: join the phantoms' true severity (every image; normal ones score 0) as a severity file."""
    src = write_phantom_dataset(root / "phantoms", SynthConfig(n=n, seed=seed, size=max(64, size * 2)), progress=False)
    sev = write_severity_file(src, root / "severity.csv", labels=("normal", "pneumonia", "COVID-19")) if severity else None
    build_dataset(BuildConfig(sources=[SourceSpec("cohen", src, "cohen")], out=root / "ds", size=size,
                              val_fraction=0.2, test_fraction=0.1 if not severity else 0.2, workers=1, progress=False,
                              severity=sev))
    return root / "ds"
