"""Small built datasets of phantom radiographs, for tests that train."""

from pathlib import Path

from covidnet.data.build import BuildConfig, SourceSpec, build_dataset
from covidnet.data.synth import SynthConfig, write_phantom_dataset, write_severity_file


def make_dataset(root: Path, n: int, size: int, seed: int = 0, severity: bool = False, **build) -> Path:
    """``severity``: join the phantoms' true severity (every image; normal ones score 0) as a severity file;
    ``build``: other BuildConfig fields (e.g. ``top_crop``)."""
    src = write_phantom_dataset(root / "phantoms", SynthConfig(n=n, seed=seed, size=max(64, size * 2)), progress=False)
    sev = (
        write_severity_file(src, root / "severity.csv", labels=("normal", "pneumonia", "COVID-19"))
        if severity
        else None
    )
    build_dataset(
        BuildConfig(
            sources=[SourceSpec("cohen", src, "cohen")],
            out=root / "ds",
            size=size,
            val_fraction=0.2,
            test_fraction=0.1 if not severity else 0.2,
            workers=1,
            progress=False,
            severity=sev,
            **build,
        )
    )
    return root / "ds"


def trained_checkpoint(root: Path, size: int, seed: int) -> tuple[Path, Path]:
    """(dataset, best.pt): 60 phantoms built at ``size`` and a covidnet-cxr3b trained on them for 2 epochs,
    the checkpoint the eval, export and service tests work on."""
    from covidnet.train import TrainConfig, train

    ds = make_dataset(root, n=60, size=size, seed=seed)
    train(
        TrainConfig(data=str(ds), out=str(root / "run"), epochs=2, batch_size=8, lr=3e-4, progress=False, precise_bn=64)
    )
    return ds, root / "run" / "best.pt"
