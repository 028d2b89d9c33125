"""Test 5, attention inside the lungs: the share of each image's Grad-CAM mass (for the class the model calls)
that falls inside its dilated lung mask, per source and class, against the lungs' share of the image."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch

from ..contract import LUNG_MARGIN
from ..metrics.bootstrap import format_ci
from ..runtime import LoadedModel
from .lung_fields import LungFields
from .verdicts import ATTENTION_FAIL, ATTENTION_WARN, interval_verdict

ATTENTION_MIN_IMAGES = 3  # a source x class group with fewer masked images is listed, not judged
ATTENTION_RESAMPLES = 1000
ATTENTION_EXAMPLES = 4  # images per source in the attention figure


def lung_attention(lm: LoadedModel, images, lungs: LungFields, batch: int = 16) -> tuple:
    """For each image with a lung mask: the share of its Grad-CAM mass (for the class the model calls)
    inside the dilated mask, and the share of the image the dilated mask covers (what a map spread evenly
    would score). The CAM is resized to the stored side (bilinear) first. Returns (positions, shares,
    areas) and a few examples per source for the figure: image, CAM, mask."""
    import torch.nn.functional as F

    pos = np.flatnonzero(lungs.has)
    shares, areas = np.empty(len(pos)), np.empty(len(pos))
    sources = lungs.sources
    examples: dict = defaultdict(list)
    for k in range(0, len(pos), batch):
        p = pos[k : k + batch]
        imgs = np.asarray(images[p])
        cams = torch.from_numpy(lm.cams(imgs))[:, None]
        cams = F.interpolate(cams, size=imgs.shape[-2:], mode="bilinear", align_corners=False)[:, 0].numpy()
        region = lungs.masks(p)
        mass = cams.sum((1, 2))
        shares[k : k + len(p)] = np.where(mass > 0, (cams * region).sum((1, 2)) / np.maximum(mass, 1e-12), np.nan)
        areas[k : k + len(p)] = region.mean((1, 2))
        for j, q in enumerate(p):
            if len(examples[sources[q]]) < ATTENTION_EXAMPLES:
                examples[sources[q]].append(
                    {"image": imgs[j], "cam": cams[j], "lungs": region[j], "share": shares[k + j]}
                )
    return pos, shares, areas, dict(examples)


def _attention_reading(verdict: str, worst: dict, lungs: LungFields) -> str:
    """The attention test's sentence, on the group its verdict rests on."""
    meaning = {
        "fail": "less of its attention falls on the lungs than a map blind to them would put there, so what "
        "drives its calls there lies outside the lungs.",
        "warning": f"its attention is on the lungs by less than {ATTENTION_WARN:.0%} more than a map blind to them "
        "would be, so the maps show little that it reads the lungs.",
        "ok": f"every group puts at least {ATTENTION_WARN:.0%} more of its attention on the lungs than their share "
        "of the image.",
    }[verdict]
    return (
        f"Among {worst['source']}'s {worst['class']} images ({worst['images']} with a lung mask), "
        f"{format_ci(worst['share'])} of the Grad-CAM mass lies inside the lungs, which cover "
        f"{worst['lung_area']:.0%} of the image (excess {format_ci(worst['excess'])}): {meaning} (fail: an upper "
        f"95 % bound of the excess below {ATTENTION_FAIL:.0%}; warning: a mean excess below {ATTENTION_WARN:.0%}; "
        f"{lungs.said()}.)"
    )


def attention_inside_lungs(
    lm: LoadedModel, images, y: np.ndarray, patients, lungs: LungFields | None, seed: int = 0
) -> tuple[dict, dict]:
    """The share of Grad-CAM mass inside the lungs, per source and class (the image's label): its mean
    with a 95 % patient-bootstrap interval, beside the lungs' share of the image. A model that reads the
    disease puts its attention on the lungs; one that reads a laterality marker, text or the border puts
    it outside (DeGrave et al. 2021). The figure judged is the *excess*: the share minus the lungs' share of
    the image, what a map blind to the lungs would score (the lungs cover about half of a phantom and two
    thirds of a real film, so a fixed threshold on the share would judge the framing, not the model).
    Verdict from the worst group of at least ``ATTENTION_MIN_IMAGES`` images: fail if the upper bound of its
    excess is below ``ATTENTION_FAIL``, warning if its mean excess is below ``ATTENTION_WARN``. Needs lung
    masks; skipped without. Returns the test and the figure's examples."""
    from ..metrics.bootstrap import patient_bootstrap

    base = {
        "test": "attention inside the lungs",
        "metric": "share of Grad-CAM mass (predicted class) inside the lung mask dilated by "
        f"{LUNG_MARGIN:.0%} of the side; mean per source and class",
        "thresholds": {
            "figure": "excess: mean share minus the lungs' mean share of the image",
            "upper_ci_below_fail": ATTENTION_FAIL,
            "mean_below_warning": ATTENTION_WARN,
        },
        "min_images": ATTENTION_MIN_IMAGES,
    }
    if lungs is None or not lungs.has.any():
        why = "the dataset has no lung masks: build it with --lung-masks NAME=DIR or --lungs CKPT"
        return {**base, "verdict": "skipped", "reason": why, "reading": why}, {}
    if lm.contract.lungs == "crop":
        why = "the model sees its lung crop (--lungs crop), so its maps lie in the crop's frame, not the image's"
        return {**base, "verdict": "skipped", "reason": why, "reading": why}, {}
    pos, shares, areas, examples = lung_attention(lm, images, lungs)
    classes = lm.classes
    sources = lungs.sources[pos]
    groups, judged = [], []
    for src in sorted(set(sources)):
        for c in sorted(set(y[pos][sources == src])):
            m = (sources == src) & (y[pos] == c) & ~np.isnan(shares)
            s, a, g = shares[m], areas[m], np.asarray(patients)[pos][m]
            ci = patient_bootstrap(
                lambda i, s=s, a=a: {"share": float(s[i].mean()), "excess": float((s[i] - a[i]).mean())},
                g,
                ATTENTION_RESAMPLES,
                seed,
            )
            row = {
                "source": str(src),
                "class": classes[c],
                "images": int(m.sum()),
                "share": ci["share"],
                "lung_area": float(a.mean()),
                "excess": ci["excess"],
            }
            groups.append(row)
            if row["images"] >= ATTENTION_MIN_IMAGES:
                judged.append(row)
    if not judged:
        why = f"no source x class group has {ATTENTION_MIN_IMAGES} images with a lung mask"
        return {**base, "verdict": "skipped", "groups": groups, "reason": why, "reading": why}, examples
    verdict, worst = interval_verdict(judged, lambda r: r["excess"], ATTENTION_FAIL, ATTENTION_WARN)
    reading = _attention_reading(verdict, worst, lungs)
    return {
        **base,
        "verdict": verdict,
        "groups": groups,
        "worst": worst,
        "lungs": lungs.describe(),
        "reading": reading,
    }, examples
