"""``covidnet audit``: does the model see the disease or the hospital?

COVIDx's COVID-19 images and its controls come from different hospitals, scanners and age groups, and
a classifier can score well by recognising the source (DeGrave, Janizek & Lee, Nat. Mach. Intell.
2021). Each test here gives a figure, the threshold that turns it into a verdict (ok / warning /
fail), and a plain-language reading:

1. within-source discrimination: the pairwise AUC of each class pair inside each source that holds two
   classes (``metrics.classification.within_source_auc``) on the audited split, where the source cannot
   give the class away: the one figure a source shortcut cannot inflate, listed first.
2. source predictability: a linear probe (scikit-learn logistic regression, cross-validated by patient)
   predicts the source from the model's frozen features and from raw downsampled pixels, among images
   of the same class (when sources contribute different classes, the disease alone predicts the
   source); the mutual information between source and label in the dataset is reported beside it.
3. leave-one-source-out: for each source holding more than one class, retrain without it (the
   checkpoint's own recipe, a short schedule, ``--loso-epochs``) and compare it with the other
   sources' test split.
4. occlusion: the model evaluated with the lung fields hidden (filled with the mean of the rest of the
   image), and with only the image border kept; a model that still beats chance without the lungs is
   using something else.
5. attention inside the lungs: the share of each image's Grad-CAM mass (for the class the model calls)
   that falls inside its lung mask, per source and per class.
6. leakage: patients in two splits, identical and near-identical images across splits or sources.
7. population confounders: label x age group and label x view cross-tabulations.

Where the lungs are: a dataset built with lung masks (``data build --lung-masks``, annotated, or
``--lungs CKPT``, drawn by a lung model) gives each image its own, dilated by ``LUNG_MARGIN``
(``LungFields``); the occlusion test hides that, and the attention test counts it. An image without a
mask falls back to a fixed central box (``LUNG_BOX``), which holds a median 81 % of the real lung pixels
and is a third non-lung; the report says which images had which. The attention test needs masks.
"""

from __future__ import annotations

import math
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import torch

from . import __version__
from .contract import LUNG_MARGIN
from .data.lungmasks import PREDICTED, lung_field
from .data.records import patient_uid
from .data.store import open_store
from .errors import ConfigError
from .metrics.bootstrap import format_ci
from .metrics.classification import within_source_auc
from .runtime import LoadedModel, load
from .tasks import softmax

# verdict thresholds, reported with each figure
WITHIN_FAIL, WITHIN_WARN = 0.6, 0.7  # within-source pairwise AUC: fail if a pair's upper 95 % bound is below
# WITHIN_FAIL (near chance, 0.5), warning if a pair's value is below WITHIN_WARN
WITHIN_RESAMPLES = 1000  # patient-bootstrap resamples of the within-source intervals
EXCESS_WARN, EXCESS_FAIL = 0.10, 0.20  # within-label probe balanced accuracy above chance
OCCLUSION_WARN, OCCLUSION_FAIL = 0.10, 0.20  # macro AUC above 0.5 with the lungs hidden or only the border kept
MI_WARN = 0.10  # share of the label's entropy that the source explains (a dataset property: warning only)
LOSO_WARN, LOSO_FAIL = 0.10, 0.20  # balanced accuracy lost on a held-out source
PAEDIATRIC_AGE = 18
# the lung fields of a stored (top-cropped, square) frontal radiograph: a fixed central region
LUNG_BOX = (0.12, 0.06, 0.88, 0.82)  # x0, y0, x1, y1 as fractions of the side
BORDER = 0.12  # "border only" keeps this fraction of the side on every edge
ATTENTION_FAIL, ATTENTION_WARN = 0.0, 0.05  # on the excess of a group's mean share of Grad-CAM mass inside the
# dilated lungs over the lungs' share of the image (what a map blind to the lungs would score): fail if some
# group's upper 95 % bound is below ATTENTION_FAIL (less attention on the lungs than a blind map: it looks
# elsewhere), warning if some group's mean excess is below ATTENTION_WARN (no more than a blind map)
ATTENTION_MIN_IMAGES = 3  # a source x class group with fewer masked images is listed, not judged
ATTENTION_RESAMPLES = 1000
ATTENTION_EXAMPLES = 4  # images per source in the attention figure


def _verdict(value: float, warn: float, fail: float) -> str:
    if value != value:  # NaN
        return "skipped"
    return "fail" if value >= fail else "warning" if value >= warn else "ok"


def _worst(*verdicts: str) -> str:
    order = ["skipped", "ok", "warning", "fail"]
    vs = [v for v in verdicts if v != "skipped"]
    return max(vs, key=order.index) if vs else "skipped"


def _interval_verdict(items: list, figure, fail: float, warn: float) -> tuple[str, dict]:
    """The rule of the tests judged on figures with intervals (``figure(item)``: a ``{"value", "ci95"}``):
    fail when some item's upper 95 % bound (its value where it has no interval) is below ``fail``,
    warning when some item's value is below ``warn``, ok otherwise. Returns the verdict and the item it
    rests on (the lowest upper bound for a fail, the lowest value otherwise)."""

    def upper(item):
        f = figure(item)
        return f["ci95"][1] if f["ci95"] else f["value"]

    worst = min(items, key=upper)
    if upper(worst) < fail:
        return "fail", worst
    worst = min(items, key=lambda item: figure(item)["value"])
    return ("warning" if figure(worst)["value"] < warn else "ok"), worst


# --- within source -------------------------------------------------------------------------------------------


def within_source_discrimination(
    y: np.ndarray, probs: np.ndarray, classes, patients, sources, resamples: int = WITHIN_RESAMPLES, seed: int = 0
) -> dict:
    """The pairwise AUCs inside each source (``within_source_auc``) and a verdict from the worst pair's
    interval: fail when some pair's upper 95 % bound is below ``WITHIN_FAIL`` (the model cannot be shown
    to beat chance where the source gives nothing away), warning when some pair's value is below
    ``WITHIN_WARN``; skipped when no source holds two classes with enough images."""
    ws = within_source_auc(y, probs, classes, patients, sources, resamples, seed)
    base = {
        "test": "within-source discrimination",
        "metric": ws["metric"],
        "chance": 0.5,
        "thresholds": {"upper_ci_below_fail": WITHIN_FAIL, "value_below_warning": WITHIN_WARN},
        "min_images_per_class": ws["min_images_per_class"],
        "pairs": ws["pairs"],
        "skipped_pairs": ws["skipped"],
        "per_source": ws["per_source"],
    }
    if not ws["pairs"]:
        return {**base, "verdict": "skipped", "reason": ws["note"], "reading": ws["note"]}
    verdict, worst = _interval_verdict(ws["pairs"], lambda p: p["auc"], WITHIN_FAIL, WITHIN_WARN)
    a, b = worst["classes"]
    meaning = {
        "fail": f"its upper bound is below {WITHIN_FAIL:.2f}: where the source gives nothing away the model is near "
        "chance, so its overall figures come from telling the sources apart.",
        "warning": f"it is below {WITHIN_WARN:.2f}: weak discrimination where the source cannot help.",
        "ok": f"every pair is at least {WITHIN_WARN:.2f}: the model separates the classes where the source cannot "
        "give them away.",
    }[verdict]
    return {
        **base,
        "verdict": verdict,
        "worst": worst,
        "reading": (
            f"Within {worst['source']}, {a} vs {b} ({worst['counts'][a]['images']} and {worst['counts'][b]['images']} "
            f"images): pairwise AUC {format_ci(worst['auc'])}, the worst of {len(ws['pairs'])} within-source pair(s); "
            f"{meaning} (fail: an upper 95 % bound below {WITHIN_FAIL:.2f}; warning: a value below {WITHIN_WARN:.2f}.)"
        ),
    }


# --- features and probes ----------------------------------------------------------------------------------


def probe(x: np.ndarray, target: np.ndarray, groups: np.ndarray, seed: int = 0) -> float:
    """Balanced accuracy of a cross-validated linear probe (folds by patient, so one patient's images
    never sit on both sides)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import GroupKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folds = min(5, len(np.unique(groups)))
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.1))
    pred = cross_val_predict(clf, x, target, groups=groups, cv=GroupKFold(n_splits=folds))
    return float(balanced_accuracy_score(target, pred))


def mutual_information(sources: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(MI in bits, MI / H(label)): how much of the label the source alone gives away."""
    from sklearn.metrics import mutual_info_score

    mi = mutual_info_score(sources, labels) / math.log(2)
    p = np.bincount(np.unique(labels, return_inverse=True)[1]) / len(labels)
    h = float(-(p * np.log2(p)).sum())
    return float(mi), float(mi / h) if h > 0 else float("nan")


def _probe_per_label(features, pixels, sources, labels, groups, classes, seed: int) -> dict:
    """The probes' balanced accuracies among the images of each label that comes from several sources."""
    per_label = {}
    for c in np.unique(labels):
        m = labels == c
        src, cnt = np.unique(sources[m], return_counts=True)
        name = classes[c]
        if len(src) < 2 or cnt.min() < 5 or len(np.unique(groups[m])) < 4:
            per_label[name] = {"skipped": f"{name} images come from {len(src)} source(s), smallest {cnt.min()} images"}
            continue
        per_label[name] = {
            "chance": 1 / len(src),
            "features": probe(features[m], sources[m], groups[m], seed),
            "pixels": probe(pixels[m], sources[m], groups[m], seed),
            "n": int(m.sum()),
        }
    return per_label


def source_predictability(
    features: np.ndarray,
    pixels: np.ndarray,
    sources: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray,
    classes,
    seed: int = 0,
) -> dict:
    """Probe the source *within each label*: when sources contribute different classes, the disease
    itself predicts the source, so only a source signal among images of the same class is a shortcut
    the model could use. The verdict takes the worst label; the mutual information between source and
    label (a property of the dataset, not of the model) can raise at most a warning."""
    uniq, counts = np.unique(sources, return_counts=True)
    base = {
        "test": "source predictability",
        "sources": {str(s): int(c) for s, c in zip(uniq, counts)},
        "thresholds": {
            "within_label_excess_warning": EXCESS_WARN,
            "within_label_excess_fail": EXCESS_FAIL,
            "mi_share_warning": MI_WARN,
        },
    }
    if len(uniq) < 2:
        return {**base, "verdict": "skipped", "reason": "one source only: nothing to confound with"}
    mi, mi_share = mutual_information(sources, labels)
    per_label = _probe_per_label(features, pixels, sources, labels, groups, classes, seed)
    probed = {k: v for k, v in per_label.items() if "skipped" not in v}
    mi_verdict = "warning" if mi_share >= MI_WARN else "ok"
    if not probed:
        return {
            **base,
            "verdict": _worst(mi_verdict, "warning"),
            "per_label": per_label,
            "mutual_information_bits": mi,
            "mutual_information_share_of_label": mi_share,
            "reading": (
                f"No class comes from two sources, so source and label cannot be told apart: a source "
                f"detector would score like a disease detector. The source alone gives away {mi_share:.0%} "
                "of the label's information."
            ),
        }
    worst_label = max(probed, key=lambda k: max(probed[k]["features"], probed[k]["pixels"]) - probed[k]["chance"])
    w = probed[worst_label]
    excess = max(w["features"], w["pixels"]) - w["chance"]
    verdict = _worst(_verdict(excess, EXCESS_WARN, EXCESS_FAIL), mi_verdict)
    return {
        **base,
        "verdict": verdict,
        "per_label": per_label,
        "worst_label": worst_label,
        "excess_over_chance": excess,
        "features_balanced_accuracy": w["features"],
        "pixels_balanced_accuracy": w["pixels"],
        "chance": w["chance"],
        "mutual_information_bits": mi,
        "mutual_information_share_of_label": mi_share,
        "reading": (
            f"Among {worst_label} images, the source is predicted with balanced accuracy {w['features']:.2f} from "
            f"the model's features and {w['pixels']:.2f} from raw pixels (chance {w['chance']:.2f}): "
            + (
                "the images carry a source signature the disease does not explain."
                if excess >= EXCESS_WARN
                else "no source signature beyond the disease."
            )
            + f" The source alone gives away {mi_share:.0%} of the label's information."
        ),
    }


# --- occlusion ----------------------------------------------------------------------------------------------


def box_region(side: int) -> np.ndarray:
    """The fixed lung box (``LUNG_BOX``) as a (side, side) bool region."""
    region = np.zeros((side, side), bool)
    x0, y0, x1, y1 = (round(v * side) for v in LUNG_BOX)
    region[y0:y1, x0:x1] = True
    return region


def occlude(images: np.ndarray, mode: str, lungs: np.ndarray | None = None) -> np.ndarray:
    """Hide the lung fields ("lungs": the (B, S, S) bool regions ``lungs``, else the fixed box) or
    everything but the border ("border"). The hidden region is filled with the mean of what is kept, per
    image: black would be an input no radiograph looks like, and it would also erase a shortcut the model
    reads from overall exposure."""
    out = np.array(images, copy=True)
    if mode == "none":
        return out
    n = out.shape[-1]
    if mode == "lungs":
        hide = lungs if lungs is not None else np.broadcast_to(box_region(n), out.shape)
    else:
        b = round(BORDER * n)
        middle = np.zeros((n, n), bool)
        middle[b : n - b, b : n - b] = True
        hide = np.broadcast_to(middle, out.shape)
    keep = ~hide
    fill = (out * keep).sum((1, 2)) / np.maximum(keep.sum((1, 2)), 1)
    return np.where(hide, np.round(fill).astype(np.uint8)[:, None, None], out)


class LungFields:
    """Where the lungs are in some rows of a store: each row's lung mask (annotated, or drawn by a lung
    model at build time) dilated by ``LUNG_MARGIN`` (``lung_field``) where the store has one, the fixed box
    elsewhere. ``masks(pos)`` / ``regions(pos)`` take positions into ``rows``, a batch at a time."""

    def __init__(self, store, rows: np.ndarray):
        self.store, self.rows = store, np.asarray(rows, dtype=np.int64)
        with_masks = store.masks is not None
        self.kind = np.array([(store.index[r].get("lung_mask") or "") if with_masks else "" for r in self.rows])
        self.sources = np.array([store.index[r]["source"] for r in self.rows])
        self.has = self.kind != ""
        self.side = store.size

    def masks(self, pos: np.ndarray) -> np.ndarray:
        """(B, S, S) bool: the dilated lung mask of each position that has one, nothing elsewhere."""
        pos = np.asarray(pos)
        out = np.zeros((len(pos), self.side, self.side), bool)
        has = self.has[pos]
        if has.any():
            out[has] = lung_field(self.store.read_masks(self.rows[pos[has]]), LUNG_MARGIN)
        return out

    def regions(self, pos: np.ndarray) -> np.ndarray:
        """(B, S, S) bool: the lungs to hide, the mask where there is one, else the fixed box."""
        out = self.masks(pos)
        out[~self.has[np.asarray(pos)]] = box_region(self.side)
        return out

    def describe(self) -> dict:
        predicted = int((self.kind == PREDICTED).sum())
        return {
            "lung_fields": "masks" if self.has.all() else "masks and box" if self.has.any() else "box",
            "annotated_masks": int(self.has.sum()) - predicted,
            "predicted_masks": predicted,
            "box": int((~self.has).sum()),
            "mask_margin": LUNG_MARGIN,
            "lung_box": LUNG_BOX,
        }

    def said(self) -> str:
        d = self.describe()
        if d["lung_fields"] == "box":
            return (
                "the lungs are a fixed central box (the dataset has no lung masks: build with --lung-masks or --lungs)"
            )
        where = f"{d['annotated_masks']} annotated and {d['predicted_masks']} predicted lung masks"
        box = f", the fixed box for {d['box']} images without one" if d["box"] else ""
        return f"the lungs are each image's mask, dilated by {LUNG_MARGIN:.0%} of the side ({where}{box})"


CHUNK = 256  # images a test holds at a time


def _chunks(images, size: int = CHUNK):
    """An array of images, or a store's ``RowsView``, ``size`` images at a time."""
    for k in range(0, len(images), size):
        yield np.asarray(images[k : k + size])


def _thumbnails(images: np.ndarray) -> np.ndarray:
    """Raw pixels for the source probe: each image area-averaged to 16 x 16, flattened."""
    small = torch.nn.functional.interpolate(torch.from_numpy(images).float()[:, None], size=(16, 16), mode="area")
    return small.flatten(1).numpy()


def macro_auc(y: np.ndarray, probs: np.ndarray, present: list[int]) -> float:
    """The mean one-vs-rest ROC-AUC of ``probs`` (N, K) over the classes ``present`` (each with images on
    both sides)."""
    from sklearn.metrics import roc_auc_score

    return float(np.mean([roc_auc_score(y == c, probs[:, c]) for c in present]))


def occlusion(lm: LoadedModel, images, y: np.ndarray, lungs: LungFields | None = None) -> dict:
    """Macro one-vs-rest ROC-AUC of the model's probabilities on the images, with the lungs hidden (each
    image's dilated lung mask from ``lungs``, else the fixed box) and with only the border kept. AUC, not
    accuracy: an occluded image often gets the same top class whatever it shows, while the probabilities
    still rank the classes by what is left."""

    k = len(lm.classes)
    base = {
        "test": "occlusion",
        "chance": 0.5,
        "lung_box": LUNG_BOX,
        "border": BORDER,
        "lungs": lungs.describe() if lungs is not None else {"lung_fields": "box", "lung_box": LUNG_BOX},
        "metric": "macro one-vs-rest ROC-AUC",
        "thresholds": {"above_chance_warning": OCCLUSION_WARN, "above_chance_fail": OCCLUSION_FAIL},
    }
    present = [c for c in range(k) if 0 < (y == c).sum() < len(y)]
    if len(present) < 2:
        return {**base, "verdict": "skipped", "reason": "the evaluated images hold one class only"}
    scores = {}
    for mode in ("none", "lungs", "border"):
        logits = []
        for start, chunk in zip(range(0, len(images), CHUNK), _chunks(images)):
            hide = (
                lungs.regions(np.arange(start, start + len(chunk))) if lungs is not None and mode == "lungs" else None
            )
            logits.append(lm.logits(occlude(chunk, mode, hide)))
        probs = softmax(np.concatenate(logits))
        scores[mode] = macro_auc(y, probs, present)
    worst = max(scores["lungs"], scores["border"]) - 0.5
    verdict = _verdict(worst, OCCLUSION_WARN, OCCLUSION_FAIL)
    where = lungs.said() if lungs is not None else "the lungs are a fixed central box"
    return {
        **base,
        "verdict": verdict,
        "auc": scores,
        "n": int(len(y)),
        "reading": (
            f"Macro AUC {scores['none']:.2f} on the images, {scores['lungs']:.2f} with the lungs hidden and "
            f"{scores['border']:.2f} with only the border kept (chance 0.50): "
            + (
                "the model still tells the classes apart without the lungs, so it uses something else"
                if verdict != "ok"
                else "without the lungs it is near chance, as it should be"
            )
            + f"; {where}."
        ),
    }


# --- attention inside the lungs -----------------------------------------------------------------------------


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
    from .metrics.bootstrap import patient_bootstrap

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
    verdict, worst = _interval_verdict(judged, lambda r: r["excess"], ATTENTION_FAIL, ATTENTION_WARN)
    reading = _attention_reading(verdict, worst, lungs)
    return {
        **base,
        "verdict": verdict,
        "groups": groups,
        "worst": worst,
        "lungs": lungs.describe(),
        "reading": reading,
    }, examples


# --- leave one source out ---------------------------------------------------------------------------------


def leave_one_source_out(checkpoint_meta: dict, data: str, epochs: int, device: str, seed: int = 0) -> dict:
    """For each source that holds more than one class: retrain on the other sources (``covidnet train``,
    the checkpoint's own recipe, ``epochs`` epochs) and compare the held-out source (external) with the
    other sources' test split (internal). A derived dataset shares the store's images (a link) and only
    rewrites its index."""
    base = {
        "test": "leave-one-source-out",
        "epochs": epochs,
        "thresholds": {"drop_warning": LOSO_WARN, "drop_fail": LOSO_FAIL, "metric": "balanced accuracy"},
    }
    if epochs <= 0:
        return {**base, "verdict": "skipped", "reason": "retraining is optional: pass --loso-epochs N to run it"}
    store = open_store(data)
    by_source = defaultdict(set)
    for r in store.index:
        by_source[r["source"]].add(r["label"])
    held = sorted(s for s, labs in by_source.items() if len(labs) > 1)
    if len(by_source) < 2 or not held:
        return {**base, "verdict": "skipped", "reason": "needs two sources, one of them with more than one class"}
    with tempfile.TemporaryDirectory() as tmp:
        results = {s: _without_source(store, s, checkpoint_meta, Path(tmp), epochs, device, seed) for s in held}
    drops = [
        r["internal_balanced_accuracy"] - r["external_balanced_accuracy"]
        for r in results.values()
        if r.get("internal_balanced_accuracy") is not None
    ]
    worst = max(drops) if drops else float("nan")
    verdict = _verdict(worst, LOSO_WARN, LOSO_FAIL)
    return {
        **base,
        "verdict": verdict,
        "per_source": results,
        "largest_drop": worst,
        "reading": (
            f"Trained without a source and tested on it, balanced accuracy falls by up to {worst:.2f} against the "
            "other sources' test split"
            + (": performance does not carry to a new hospital." if verdict != "ok" else ", within the threshold.")
        )
        if drops
        else "no internal test split",
    }


def _without_source(store, held: str, checkpoint_meta: dict, tmp: Path, epochs: int, device: str, seed: int) -> dict:
    """One held-out source: retrain on the others (in ``tmp``) and score the held-out source (external) and
    the others' test split (internal) by balanced accuracy; a reason where that cannot be done."""
    import dataclasses

    from sklearn.metrics import balanced_accuracy_score

    from .evaluate import predict_store
    from .train import TrainConfig, train

    ds = tmp / f"without-{held}"
    store.derive(ds, ["external" if r["source"] == held else r["split"] for r in store.index])
    others = [r for r in store.index if r["source"] != held]
    if not any(r["split"] == "train" for r in others) or not any(r["split"] == "val" for r in others):
        return {"skipped": "the other sources have no train or val images"}
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    cfg = {k: v for k, v in checkpoint_meta["train_config"].items() if k in fields}
    cfg.update(
        data=str(ds),
        out=str(tmp / f"run-{held}"),
        epochs=epochs,
        resume=False,
        progress=False,
        init="random",
        seed=seed,
        device=device,
    )
    try:
        train(TrainConfig(**cfg))
    except ConfigError as e:  # e.g. --debias source with no class left in two sources
        return {"skipped": f"the checkpoint's recipe cannot train without {held}: {e}"}
    lm = load(tmp / f"run-{held}" / "best.pt", device, tasks=("classification",), backend="torch")
    scores = {}
    for split in ("test", "external"):
        if not any(r["split"] == split for r in open_store(ds).index):
            continue
        p = predict_store(lm, str(ds), split)
        scores[split] = float(balanced_accuracy_score(p.y, p.out.argmax(1)))
    return {
        "internal_balanced_accuracy": scores.get("test"),
        "external_balanced_accuracy": scores["external"],
        "n_external": sum(r["source"] == held for r in store.index),
    }


# --- leakage ------------------------------------------------------------------------------------------------


def leakage(index: list[dict], images) -> dict:
    import hashlib

    from .data.build import NEAR_DUP_BITS, near_duplicate_pairs, perceptual_hash

    splits = defaultdict(set)
    for r in index:
        splits[patient_uid(r["source"], r["patient_id"])].add(r["split"])
    patients_crossing = sorted(p for p, s in splits.items() if len(s) > 1)
    digest, hashes = [], []
    for chunk in _chunks(images):  # one pass, a batch at a time
        digest += [hashlib.sha256(np.ascontiguousarray(im).tobytes()).hexdigest() for im in chunk]
        hashes += [np.frombuffer(perceptual_hash(np.asarray(im)), np.uint8) for im in chunk]
    hashes = np.stack(hashes) if hashes else np.zeros((0, 32), np.uint8)
    by_digest = defaultdict(list)
    for i, d in enumerate(digest):
        by_digest[d].append(i)
    exact_cross = [g for g in by_digest.values() if len({index[i]["split"] for i in g}) > 1]
    pairs = near_duplicate_pairs(hashes, NEAR_DUP_BITS)
    near_cross_split = [(i, j) for i, j in pairs if index[i]["split"] != index[j]["split"]]
    near_cross_source = [(i, j) for i, j in pairs if index[i]["source"] != index[j]["source"]]
    verdict = (
        "fail" if (patients_crossing or exact_cross or near_cross_split) else "warning" if near_cross_source else "ok"
    )
    name = lambda i: f"{index[i]['source']}:{index[i]['filename']} ({index[i]['split']})"
    return {
        "test": "leakage",
        "verdict": verdict,
        "patients_in_two_splits": len(patients_crossing),
        "exact_duplicates_across_splits": len(exact_cross),
        "near_duplicates_across_splits": len(near_cross_split),
        "near_duplicates_across_sources": len(near_cross_source),
        "examples": [f"{name(i)} ~ {name(j)}" for i, j in (near_cross_split + near_cross_source)[:10]],
        "thresholds": {
            "fail": "any patient or image across splits",
            "warning": "an image in two sources",
            "near_duplicate_bits": NEAR_DUP_BITS,
        },
        "reading": (
            "Patients or images are shared between splits: test figures are optimistic."
            if verdict == "fail"
            else "The same image appears in two sources."
            if verdict == "warning"
            else "No patient or image is shared between splits or sources."
        ),
    }


# --- population ---------------------------------------------------------------------------------------------


def population(index: list[dict]) -> dict:
    def age_group(r):
        try:
            return "paediatric" if float(r["age"]) < PAEDIATRIC_AGE else "adult"
        except (TypeError, ValueError):
            return "unknown"

    labels = sorted({r["label"] for r in index})
    tables, flags = {}, []
    for name, key in (("age_group", age_group), ("view", lambda r: r.get("view") or "unknown")):
        table = defaultdict(Counter)
        for r in index:
            table[r["label"]][key(r)] += 1
        tables[name] = {lab: dict(c) for lab, c in table.items()}
        values = sorted({v for c in table.values() for v in c})
        for v in values:
            if v == "unknown":
                continue
            present = [lab for lab in labels if table[lab][v]]
            share = {lab: table[lab][v] / max(1, sum(table[lab].values())) for lab in labels}
            if len(present) == 1 and len(labels) > 1 and sum(table[lab][v] for lab in labels) >= 5:
                flags.append(f"every {name.replace('_', ' ')} '{v}' image is {present[0]}")
            if max(share.values()) - min(share.values()) >= 0.5:
                flags.append(
                    f"{name.replace('_', ' ')} '{v}' is {max(share, key=share.get)} {max(share.values()):.0%} "
                    f"vs {min(share, key=share.get)} {min(share.values()):.0%}"
                )
    verdict = "fail" if any("every" in f for f in flags) else "warning" if flags else "ok"
    return {
        "test": "population confounders",
        "verdict": verdict,
        "tables": tables,
        "flags": flags,
        "thresholds": {
            "fail": "a group (e.g. paediatric, AP supine) present in one label only",
            "warning": "a group's share differs by >= 50 points between labels",
        },
        "reading": ("; ".join(flags) if flags else "No age group or view is tied to a label."),
    }


# --- the audit ----------------------------------------------------------------------------------------------


def run_audit(
    checkpoint: str,
    data: str,
    split: str = "test",
    device: str = "auto",
    max_images: int = 0,
    seed: int = 0,
    report: str | None = None,
    loso_epochs: int = 0,
) -> dict:
    """The shortcut audit of a classification ``checkpoint`` on the built dataset ``data`` (the
    within-source and occlusion tests on ``split``); an HTML page in ``report`` when given."""
    lm = load(checkpoint, device, tasks=("classification",), backend="torch")
    store = open_store(data)
    lm.check_store(store, str(data))
    classes = lm.classes
    binary = len(classes) == 2
    rows = store.rows()
    rng = np.random.default_rng(seed)
    if max_images and len(rows) > max_images:
        rows = np.sort(rng.choice(rows, max_images, replace=False))
    index = [store.index[r] for r in rows]
    images = store.view(rows)  # read a batch at a time by every test: the store is never in memory whole
    labels = store.labels(rows, binary=binary)
    sources = np.array([r["source"] for r in index])
    groups = np.array(store.patients(rows))
    feats = lm.features(images)
    pixels = np.concatenate([_thumbnails(chunk) for chunk in _chunks(images)])
    eval_rows = (
        np.array([i for i, r in enumerate(index) if r["split"] == split]) if split != "all" else np.arange(len(index))
    )
    if len(eval_rows) == 0:
        raise ConfigError(f"{data}: no images in split {split!r} for the occlusion test")
    evaluated = store.view(rows[eval_rows])
    eval_probs = softmax(lm.logits(evaluated), lm.meta.get("temperature"))
    lungs = LungFields(store, rows[eval_rows])
    attention, examples = attention_inside_lungs(lm, evaluated, labels[eval_rows], groups[eval_rows], lungs, seed)
    tests = {
        "within_source": within_source_discrimination(
            labels[eval_rows], eval_probs, classes, groups[eval_rows], sources[eval_rows], seed=seed
        ),
        "source_predictability": source_predictability(feats, pixels, sources, labels, groups, classes, seed),
        "leave_one_source_out": leave_one_source_out(lm.meta, data, loso_epochs, device, seed),
        "occlusion": occlusion(lm, evaluated, labels[eval_rows], lungs),
        "attention_inside_lungs": attention,
        "leakage": leakage(index, images),
        "population": population(index),
    }
    out = {
        "checkpoint": str(checkpoint),
        "data": str(data),
        "split": split,
        "n_images": int(len(rows)),
        "classes": list(classes),
        "version": __version__,
        "tests": tests,
        "summary": [
            {"test": t["test"], "verdict": t["verdict"], "reading": t.get("reading", t.get("reason", ""))}
            for t in tests.values()
        ],
    }
    if report:
        from .report import write_audit_report

        write_audit_report(report, out, examples)
    return out
