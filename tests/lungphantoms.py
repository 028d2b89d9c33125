"""Phantoms at 64 px with their true lungs, as the lung tests build them."""

from pathlib import Path

from covidnet.data.build import BuildConfig, SourceSpec, build_dataset
from covidnet.data.lungmasks import MaskSpec
from covidnet.data.synth import MASKS_DIR, SynthConfig, write_phantom_dataset

SIZE = 64
FAST = dict(task="segmentation", arch="lung-unet-tiny", epochs=10, batch_size=4, lr=3e-3, progress=False, device="cpu")


def phantom_build(root: Path, n: int, seed: int = 0, masks: bool = True, **kw) -> Path:
    src = write_phantom_dataset(root / "phantoms", SynthConfig(n=n, seed=seed, size=2 * SIZE), progress=False)
    build_dataset(
        BuildConfig(
            sources=[SourceSpec("cohen", src, "cohen")],
            out=root / "ds",
            size=SIZE,
            val_fraction=0.2,
            test_fraction=0.2,
            workers=1,
            progress=False,
            lung_masks=[MaskSpec("phantom", src / MASKS_DIR)] if masks else [],
            **kw,
        )
    )
    return root / "ds"
