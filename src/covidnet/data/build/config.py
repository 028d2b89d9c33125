"""What a build is asked for: the sources (``SourceSpec``), ``BuildConfig`` (one field per flag of
``covidnet data build``, written to config.json beside the dataset), ``--split-file`` arguments, the checks
of a config made before any work, and the exclusion reasons that are documented filters rather than errors.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from ...config import option
from ...contract import DEFAULT_SIZE, TOP_CROP, Contract
from ...errors import ConfigError, UsageError
from ..lungmasks import MaskSpec
from ..sources import READERS

SPLITS = ("train", "val", "test")
# Exclusions that are documented filters (what the user asked for); any other one fails --strict
FILTER_REASONS = {
    "lateral view",
    "view not frontal or unknown",
    "not an X-ray",
    "unlabelled",
    "finding not in COVIDx classes",
    "not normal, no opacity (excluded as in COVIDx)",
    "paediatric",
    "exact duplicate",
    "near duplicate",
    "not in the official split files",
    "patient also in the official test split",
    "patient also in another official split",
    "reaches COVIDx through another source",  # --cohen-rules reference
    # how the covidx, sirm and bimcv readers handle what a release or a sheet holds (see their docstrings)
    "negative label in a three-class file",
    "duplicate line",
    "image listed twice",
    "image in two official splits",
    "image not in the label files",
    "not from SIRM",
    "not a chest radiograph",
}


@dataclass
class SourceSpec:
    reader: str
    path: Path
    name: str

    @classmethod
    def parse(cls, text: str) -> SourceSpec:
        """``READER=PATH`` or ``READER:NAME=PATH`` (two folders of one layout under different names)."""
        if "=" not in text:
            raise UsageError(f"--source {text!r}: expected READER=PATH, e.g. cohen=/data/covid-chestxray-dataset")
        left, path = text.split("=", 1)
        reader, _, name = left.partition(":")
        return cls(reader.strip(), Path(path).expanduser(), (name or reader).strip())


@dataclass
class BuildConfig:
    sources: list[SourceSpec] = option(
        help="a source folder in its own layout; READER is one of: " + ", ".join(READERS) + " (repeatable)",
        flag="--source",
        metavar="READER[:NAME]=PATH",
    )
    out: Path = option(help="output folder (must not exist or be empty)")
    size: int = option(DEFAULT_SIZE, "side of the stored square images")
    top_crop: float = option(TOP_CROP, "fraction of rows removed at the top")
    val_fraction: float = option(0.1, "share of each class in val")
    test_fraction: float = option(0.1, "share of each class in test")
    seed: int = option(0, "seed of the patient-level split")
    split_files: list[tuple[str, Path]] = option(  # (split, COVIDx label file)
        help="reproduce an official COVIDx split from its label file (repeatable; the split is read from the file "
        "name unless given)",
        default_factory=list,
        flag="--split-file",
        metavar="[SPLIT=]FILE",
    )
    paediatric: str = option(
        "exclude",
        "children (age < 18, or a paediatric source such as kermany): exclude (default) or include",
        choices=("exclude", "include"),
    )
    workers: int = option(0, "processes for the images (default: every core)")
    strict: bool = option(
        False, "fail if any record is excluded for an error (not a filter), or any row of --severity is left out"
    )
    overwrite: bool = option(False, "replace --out if it exists")
    progress: bool = option(True, "no progress bar", flag="--quiet", negate=True)
    severity: Path | None = option(
        None,
        "join COVIDNet-S lung severity scores (filename, Geographic, Opacity; 0-8) to the images by file-name stem",
        metavar="FILE",
    )
    cohen_rules: str = option(
        "ours",
        "which cohen rows to keep: ours or reference (lindawangg/COVID-Net's "
        "create_COVIDx selection; see docs/readers-vs-torchxrayvision.md)",
        choices=("ours", "reference"),
    )
    split: str = option(
        "official",
        "covidx sources: keep the release's own train/val/test split (official) or "
        "draw one by patient as for any other source (patient)",
        choices=("official", "patient"),
    )
    lung_masks: list[MaskSpec] = option(
        help="join lung masks (0 background, 255 lung, 127 ignore; any format and size) to the images by "
        "file-name stem and store them beside the images; DIR is a folder or a .zip of masks, NAME labels the "
        "set in the index (repeatable; the first set wins where two outline one image)",
        default_factory=list,
        flag="--lung-masks",
        metavar="NAME=DIR",
    )
    lungs: Path | None = option(
        None,
        "segment every image without an annotated lung mask with this `covidnet lungs train` checkpoint (or its "
        "`covidnet export` .onnx, run by ONNX Runtime: faster on a CPU) and store the predicted masks (marked "
        "predicted in the index)",
        metavar="MODEL",
    )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["sources"] = [{"reader": s.reader, "path": str(s.path), "name": s.name} for s in self.sources]
        d["split_files"] = [[s, str(p)] for s, p in self.split_files]
        d["out"] = str(self.out)
        d["severity"] = str(self.severity) if self.severity else None
        d["lung_masks"] = [{"name": m.name, "path": str(m.path)} for m in self.lung_masks]
        d["lungs"] = str(self.lungs) if self.lungs else None
        return d

    @property
    def with_masks(self) -> bool:
        """Whether the store has a masks.npy beside its images."""
        return bool(self.lung_masks or self.lungs)

    @property
    def contract(self) -> Contract:
        """The preprocessing contract this build writes into its store."""
        return Contract(stored_size=self.size, top_crop=self.top_crop)

    @property
    def processes(self) -> int:
        """The workers this build runs (``workers``, or every core)."""
        return self.workers or os.cpu_count() or 1


def parse_split_file_arg(text: str) -> tuple[str, Path]:
    """``[SPLIT=]FILE``; without SPLIT the file name says it (train_COVIDx3.txt -> train)."""
    if "=" in text and text.split("=", 1)[0] in SPLITS:
        split, path = text.split("=", 1)
        return split, Path(path)
    name = Path(text).name.lower()
    for split in ("train", "val", "test"):
        if re.search(rf"(^|[^a-z]){split}", name):
            return split, Path(text)
    raise UsageError(
        f"--split-file {text}: cannot tell the split from the file name; write train=FILE, val=FILE or test=FILE"
    )


def check_config(cfg: BuildConfig) -> None:
    """Each field of ``cfg`` that can be checked without reading anything (the folders and files it names
    are looked for): one line naming the flag and the fix. ``build_dataset`` starts with it; a caller that
    opens a segmenter for ``--lungs`` may call it first, so a bad flag fails before the model is loaded."""
    if not cfg.sources:
        raise UsageError("give at least one --source READER=PATH")
    names = [s.name for s in cfg.sources]
    if len(set(names)) != len(names):
        raise UsageError(f"two sources named alike ({', '.join(names)}); name them with READER:NAME=PATH")
    if cfg.size < 32:
        raise ConfigError(f"--size must be at least 32, not {cfg.size}")
    if not (0 <= cfg.val_fraction < 1 and 0 <= cfg.test_fraction < 1 and cfg.val_fraction + cfg.test_fraction < 1):
        raise ConfigError("--val-fraction and --test-fraction must be in [0, 1) and sum to less than 1")
    _ = cfg.contract  # a bad --top-crop fails here, before any work
    if cfg.paediatric not in ("exclude", "include"):
        raise ConfigError(f"--paediatric must be exclude or include, not {cfg.paediatric!r}")
    if cfg.split not in ("official", "patient"):
        raise ConfigError(f"--split must be official or patient, not {cfg.split!r}")
    names = [m.name for m in cfg.lung_masks]
    if len(set(names)) != len(names):
        raise UsageError(f"two --lung-masks sets named alike ({', '.join(names)}); give each its own NAME")
    for m in cfg.lung_masks:
        if not m.path.exists():
            raise ConfigError(f"{m.path}: not found; --lung-masks {m.name}= needs a folder or .zip of mask images")
    if cfg.lungs and not Path(cfg.lungs).is_file():
        raise ConfigError(
            f"{cfg.lungs}: not found; --lungs takes a `covidnet lungs train` best.pt or its `covidnet export` .onnx"
        )
