"""The shortcut study's arms: the baseline (the recipe as ``covidnet train`` runs it) and each mitigation, a
``Variant``: a few ``TrainConfig`` settings, fixed before any study ran (nothing tuned on a test split);
``SHORTCUTS``, the study they make (``covidnet study shortcuts``), compared with the baseline."""

from __future__ import annotations

from dataclasses import dataclass, field

from .design import Design

ACQUISITION = {"aug_gamma": 0.3, "aug_blur": 1.0, "aug_noise": 0.02}  # fixed before any run, not tuned
# balancing without its cost, fixed before any run (2026-12-06), not tuned: alpha half-way between the natural
# mix (0) and balance (1); group DRO at the paper's scale of step and a unit group-size adjustment
TEMPERED = {"balance_sources": True, "balance_temper": 0.5}
DRO = {"group_dro": True, "class_weights": "none", "dro_step": 0.01, "dro_adjustment": 1.0}


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
            "tempered",
            "--balance-sources --balance-temper 0.5: each image drawn with weight (its class-and-source group's "
            "size)^-0.5 within its class",
            dict(TEMPERED),
        ),
        Variant(
            "dro",
            "--group-dro: the worst (class, source) group's loss minimised (Sagawa et al. 2020; step 0.01, "
            "adjustment 1, no class weights)",
            dict(DRO),
        ),
        Variant(
            "acquisition",
            "acquisition augmentation: " + ", ".join(f"--{k.replace('_', '-')} {v:g}" for k, v in ACQUISITION.items()),
            dict(ACQUISITION),
        ),
    )
}
DEFAULT_VARIANTS = "baseline,lungs-mask,clahe,debias,balance,acquisition"
SHORTCUTS = Design(command="study shortcuts", title="Shortcut study", arms=VARIANTS, reference="baseline")
