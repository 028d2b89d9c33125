"""Chest X-ray phantoms: procedurally drawn frontal radiographs, written as a cohen dataset.

Why phantoms
------------
A fresh clone has no real data, yet the readers, the build, training and the audits need images to
run on. Phantoms are drawn from nothing but a seed, so they serve as test fixtures and as the demo
data, and because we draw them we know the truth: which lung holds how much opacity, and whether a
confounder was planted. Real data never tells us that.

What is drawn
-------------
A posteroanterior (PA) chest radiograph in radiographic convention: what absorbs X-rays (bone, soft
tissue, fluid) is bright, air is dark. The patient faces the viewer, so the patient's right lung is
on the image's left. Per patient: body envelope and shoulders, spine, two lung fields, posterior and
anterior ribs, clavicles, humeral heads, heart, aortic knob, hila and branching vessels, trachea,
diaphragm domes and a gastric bubble; size, position, rotation and exposure vary. Per class, after
the radiology of each:

* **COVID-19**: ground-glass opacities, bilateral, peripheral and predominantly in the lower zones,
  hazy and multifocal (the distribution reported on radiographs by Wong et al., Radiology 2020);
* **bacterial pneumonia**: lobar consolidation, dense, one lobe of one lung, with a sharp margin
  against the fissure and air bronchograms;
* **normal**: clear lungs.

The truth of an image is measured on what was drawn (the opacity map inside the lung masks), in the
convention of Cohen et al.'s severity scores (arXiv:2005.11856, the ``annotations`` of the
covid-chestxray-dataset): ``geographic`` extent 0-8, each lung 0 none, 1 <25 %, 2 25-50 %,
3 50-75 %, 4 >75 % involved; ``opacity`` 0-8, each lung 0 none, 1 ground glass, 2 consolidation
with ground glass, 3 mostly (>50 %) consolidation, 4 white-out (the 0-8 form of the later
annotations; the collection's first 94 scores used 0-3 per lung, 0-6 in all).

The dataset
-----------
``write_phantom_dataset`` writes the real layout of ieee8023/covid-chestxray-dataset
(``metadata.csv`` with its columns and hierarchical findings, images under ``images/``), plus
``phantom_*`` truth columns, so the cohen reader reads it as it reads a real download. Several images
per patient are follow-ups: same anatomy, the disease changing. A shortcut can be planted (a burnt-in
corner marker or an intensity offset) on one hospital's images of one class: a known confounder that
audits must find.
"""

from __future__ import annotations

import csv
import datetime as dt
import math
import multiprocessing
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..config import option
from ..errors import ConfigError
from ..files import atomic_path
from .records import CLASSES

SHORTCUTS = ("marker", "offset")
OFFSET_GREY_LEVELS = 25  # the "offset" shortcut: every pixel this much brighter

# The columns of the real metadata.csv, in its order (its trailing unnamed column left out).
COHEN_COLUMNS = (
    "patientid",
    "offset",
    "sex",
    "age",
    "finding",
    "RT_PCR_positive",
    "survival",
    "intubated",
    "intubation_present",
    "went_icu",
    "in_icu",
    "needed_supplemental_O2",
    "extubated",
    "temperature",
    "pO2_saturation",
    "leukocyte_count",
    "neutrophil_count",
    "lymphocyte_count",
    "view",
    "modality",
    "date",
    "location",
    "folder",
    "filename",
    "doi",
    "url",
    "license",
    "clinical_notes",
    "other_notes",
)
PHANTOM_COLUMNS = (
    "phantom_geographic",
    "phantom_opacity",
    "phantom_extent_right",
    "phantom_extent_left",
    "phantom_shortcut",
    "phantom_hospital",
)
# The hierarchical findings of the current cohen release; bacteria as in its rows.
FINDINGS = {
    "normal": ("No Finding",),
    "pneumonia": ("Pneumonia/Bacterial/Streptococcus", "Pneumonia/Bacterial/Klebsiella"),
    "COVID-19": ("Pneumonia/Viral/COVID-19",),
}
FIRST_DATE = dt.date(2020, 1, 22)  # the collection's first images are from late January 2020

MASKS_DIR = "lungmasks"  # beside images/: each image's true lung mask, 0 background / 255 lung, same name
INVOLVED = 0.08  # opacity-map value above which a lung pixel counts as involved
CONSOLIDATED = 0.5  # ... and above which it is consolidation rather than ground glass


@dataclass
class SynthConfig:
    """What ``write_phantom_dataset`` draws. The defaults make a small balanced demo dataset."""

    n: int = option(24, "number of images")
    seed: int = option(0, "seed")
    size: int = option(256, "image side in pixels")
    images_per_patient: tuple[int, int] = (1, 3)  # inclusive range; the later images are follow-ups
    severity: tuple[float, float] = (0.3, 0.8)  # a diseased patient's first severity is drawn from this range
    contrast: float = 1.0  # the disease's opacity map scaled by this: below 1, fainter disease (shortcut studies)
    class_mix: dict[str, float] = field(default_factory=lambda: {c: 1 / 3 for c in CLASSES})
    hospitals: int = 2  # "Phantom Hospital A", "Phantom Hospital B", ...
    ap_fraction: float = 0.25  # share of patients imaged AP (portable) instead of PA
    shortcut: str | None = option(
        None, "plant a shortcut on one hospital's COVID-19 images (for audit tests)", choices=("marker", "offset")
    )
    shortcut_label: str | None = "COVID-19"  # the shortcut is planted on this class (None: every class) ...
    shortcut_hospital: int = 0  # ... and only on images from this hospital

    def validate(self) -> SynthConfig:
        """Raise ``ConfigError`` naming the first value that cannot be honoured; return self."""
        lo, hi = self.images_per_patient
        checks = [
            (self.n >= 1, f"n must be at least 1, not {self.n}"),
            (self.seed >= 0, f"seed must be a non-negative integer, not {self.seed}"),
            (self.size >= 64, f"size must be at least 64 px, not {self.size}"),
            (1 <= lo <= hi, f"images_per_patient must be a range (lo, hi) with 1 <= lo <= hi, not {(lo, hi)}"),
            (
                0 <= self.severity[0] <= self.severity[1] <= 1,
                f"severity must be a range (lo, hi) with 0 <= lo <= hi <= 1, not {tuple(self.severity)}",
            ),
            (self.hospitals >= 1, f"hospitals must be at least 1, not {self.hospitals}"),
            (0 < self.contrast <= 1, f"contrast must lie in (0, 1], not {self.contrast}"),
            (0.0 <= self.ap_fraction <= 1.0, f"ap_fraction must lie in [0, 1], not {self.ap_fraction}"),
            (
                self.shortcut is None or self.shortcut in SHORTCUTS,
                f"unknown shortcut {self.shortcut!r}; expected None or one of {', '.join(SHORTCUTS)}",
            ),
            (
                self.shortcut_label is None or self.shortcut_label in CLASSES,
                f"unknown shortcut_label {self.shortcut_label!r}; expected one of {', '.join(CLASSES)}",
            ),
            (
                0 <= self.shortcut_hospital < self.hospitals,
                f"shortcut_hospital must be in 0..{self.hospitals - 1}, not {self.shortcut_hospital}",
            ),
            (
                set(self.class_mix) <= set(CLASSES),
                f"class_mix has unknown classes {sorted(set(self.class_mix) - set(CLASSES))}; "
                f"expected {', '.join(CLASSES)}",
            ),
            (
                all(w >= 0 for w in self.class_mix.values()) and sum(self.class_mix.values()) > 0,
                "class_mix weights must be non-negative and not all zero",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        return self


def hospital_name(i: int) -> str:
    return f"Phantom Hospital {chr(ord('A') + i) if i < 26 else i + 1}"


# --------------------------------------------------------------------------------------------------
# Anatomy and pose
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Anatomy:
    """One patient's body, in body-frame units: x across (-1 image left .. 1 image right), y down
    (-1 top .. 1 bottom), for an average patient filling the film. Follow-ups share it."""

    scale: float  # body size on the film
    dx: float  # position on the film
    dy: float
    rotation: float  # radians, in-plane
    body_width: float  # chest wall half-width
    lung_lateral: float  # lateral lung border
    lung_medial: float  # medial lung border (half-width of the mediastinum)
    apex_y: float  # lung apices
    base_y: float  # costophrenic angles
    dome: float  # height of the diaphragm domes above the costophrenic angles
    heart_x: float  # heart centre and size
    heart_y: float
    heart_size: float
    rib_top: float  # where the first posterior rib leaves the spine
    rib_gap: float  # rib spacing
    exposure: float  # film gain
    gamma: float  # film contrast
    gastric_bubble: bool
    seed: int  # fine structure (vessels) and disease sites


def sample_anatomy(rng: np.random.Generator) -> Anatomy:
    """A random adult; every number within what a chest film shows."""
    u = rng.uniform
    body_width = u(0.84, 0.92)
    return Anatomy(
        scale=u(0.9, 1.0),
        dx=u(-0.04, 0.04),
        dy=u(-0.02, 0.05),
        rotation=math.radians(u(-3, 3)),
        body_width=body_width,
        lung_lateral=body_width - u(0.09, 0.13),
        lung_medial=u(0.11, 0.15),
        apex_y=u(-0.76, -0.66),
        base_y=u(0.5, 0.62),
        dome=u(0.16, 0.24),
        heart_x=u(0.1, 0.16),
        heart_y=u(0.2, 0.27),
        heart_size=u(0.9, 1.08),
        rib_top=u(-0.92, -0.86),
        rib_gap=u(0.108, 0.12),
        exposure=u(0.93, 1.05),
        gamma=u(0.85, 1.15),
        gastric_bubble=bool(rng.random() < 0.7),
        seed=int(rng.integers(2**32)),
    )


class _Frame:
    """Body-frame coordinates of every pixel, for one pose of one patient on one film."""

    def __init__(self, size: int, an: Anatomy, jitter: np.ndarray):
        self.size = size
        self.scale = an.scale * (1 + jitter[0])
        self.shift = (an.dx + jitter[1], an.dy + jitter[2])
        self.angle = an.rotation + jitter[3]
        c = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
        X, Y = np.meshgrid(c - np.float32(self.shift[0]), c - np.float32(self.shift[1]))
        cos, sin = np.float32(math.cos(self.angle) / self.scale), np.float32(math.sin(self.angle) / self.scale)
        self.x = cos * X + sin * Y
        self.y = cos * Y - sin * X
        self.ax = np.abs(self.x)
        self.px = 2.0 / size / self.scale  # one pixel in body units

    def to_pixels(self, pts: np.ndarray) -> np.ndarray:
        """Body-frame points (..., 2) to (column, row) pixel coordinates."""
        cos, sin = math.cos(self.angle), math.sin(self.angle)
        p = pts * self.scale
        X = cos * p[..., 0] - sin * p[..., 1] + self.shift[0]
        Y = sin * p[..., 0] + cos * p[..., 1] + self.shift[1]
        return np.stack([(X + 1) / 2 * self.size - 0.5, (Y + 1) / 2 * self.size - 0.5], axis=-1)

    def soft(self, d: np.ndarray, width: float = 0.008) -> np.ndarray:
        """Inside (d > 0, body units) as 1, outside as 0, over an edge ``width`` wide (at least 0.5 px):
        edges are set in anatomy, not in pixels, so a phantom looks the same at every size."""
        return 0.5 + 0.5 * np.tanh(d * np.float32(1 / max(width, 0.5 * self.px)))

    def splat(self, segs: np.ndarray, sigma: float) -> np.ndarray:
        """Lines along segments (x0, y0, x1, y1, weight): points every half pixel, binned, then blurred
        to ``sigma`` (body units), so a thousand segments cost one blur. Peak ~ weight."""
        if len(segs) == 0:
            return np.zeros_like(self.x)
        p0, p1 = self.to_pixels(segs[:, 0:2]), self.to_pixels(segs[:, 2:4])
        steps = np.maximum(np.ceil(np.hypot(*(p1 - p0).T) * 2).astype(int), 1) + 1
        seg = np.repeat(np.arange(len(segs)), steps)
        t = (np.arange(steps.sum()) - np.repeat(np.cumsum(steps) - steps, steps)) / np.repeat(steps - 1, steps)
        pts = p0[seg] + t[:, None] * (p1 - p0)[seg]
        cr = np.rint(pts).astype(int)
        ok = (cr >= 0).all(axis=1) & (cr < self.size).all(axis=1)
        sig_px = max(sigma / self.px, 0.6)
        w = segs[seg, 4][ok] * 0.5 * math.sqrt(2 * math.pi) * sig_px
        img = np.bincount(cr[ok, 1] * self.size + cr[ok, 0], weights=w, minlength=self.size**2)
        return _blur(img.reshape(self.size, self.size).astype(np.float32), sig_px)


@lru_cache(maxsize=32)
def _gaussian_transfer(n: int, sigma: float) -> np.ndarray:
    fy, fx = np.fft.fftfreq(n)[:, None], np.fft.rfftfreq(n)[None, :]
    return np.exp(-2 * (np.pi * sigma) ** 2 * (fx**2 + fy**2)).astype(np.float32)


def _blur(img: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian blur of a square image, by FFT over a reflected border: numpy only, single-threaded,
    and as fast for a wide blur as for a narrow one."""
    pad = min(img.shape[0] - 1, math.ceil(3 * sigma_px))
    p = np.pad(img, pad, mode="reflect")
    out = np.fft.irfft2(np.fft.rfft2(p) * _gaussian_transfer(p.shape[0], round(float(sigma_px), 2)), s=p.shape)
    return out[pad : pad + img.shape[0], pad : pad + img.shape[1]].astype(np.float32)


def _smooth_noise(rng: np.random.Generator, size: int, sigma_px: float) -> np.ndarray:
    n = _blur(rng.standard_normal((size, size), dtype=np.float32), sigma_px)
    return n / (n.std() + 1e-8)


# --------------------------------------------------------------------------------------------------
# Anatomy drawn (as X-ray attenuation: more is brighter on the film)
# --------------------------------------------------------------------------------------------------


def _body(f: _Frame, an: Anatomy) -> tuple[np.ndarray, np.ndarray]:
    """(soft-tissue thickness 0-1, body mask): neck, trapezius slopes, shoulders, chest wall, and
    the arms beside the chest behind a thin dark axillary gap."""
    a, y, bw = f.ax, f.y, an.body_width
    shoulder_line = -0.97 + 0.32 * np.clip((a - 0.2) / 0.85, 0, 1) ** 1.4
    top = np.maximum(f.soft(0.21 - a, 0.02), f.soft(y - shoulder_line, 0.025))
    width = bw + (1.4 - bw) * f.soft(-0.5 - y, 0.12)  # above the axillae the shoulders span the film
    torso = np.sqrt(np.clip(1 - (a / width) ** 2, 0, 1)) * f.soft(width - a, 0.02)
    arm_c, arm_r = bw + 0.2, 0.17
    arm = 0.6 * np.sqrt(np.clip(1 - ((a - arm_c) / arm_r) ** 2, 0, 1))
    thick = np.maximum(torso, arm) * top
    body = np.maximum(f.soft(width - a, 0.02), f.soft(arm_r - np.abs(a - arm_c), 0.02)) * top
    return 0.15 * body + 0.85 * thick**1.2, body


def _lung(f: _Frame, an: Anatomy, side: int, inspiration: float, ap: bool) -> dict[str, np.ndarray]:
    """One lung field. ``side`` -1 is the patient's right (image left), +1 the patient's left.

    Returns the soft mask, a depth (0 at the border, 1 deep inside), and lung-local coordinates:
    ``t`` from apex (0) to costophrenic angle (1), ``u`` from medial (0) to lateral (1) border."""
    A = side * f.x  # lateral coordinate, outward positive
    top = an.apex_y + (0.03 if ap else 0.0)
    # the liver lifts the right hemidiaphragm; a supine or sick AP patient breathes in less
    cp = an.base_y - inspiration - (0.05 if side < 0 else 0.0) - (0.06 if ap else 0.0)
    apex_a = an.lung_medial + 0.2
    t = (f.y - top) / (cp - top)
    tt = np.clip(t, 0, 1)
    lateral = apex_a + (an.lung_lateral - apex_a) * np.sin(np.pi / 2 * np.clip(tt / 0.62, 0, 1)) ** 0.5
    lateral = lateral + 0.025 * np.sin(np.pi * tt)  # the chest wall's gentle convexity
    medial = apex_a - (apex_a - an.lung_medial) * np.sin(np.pi / 2 * np.clip(tt / 0.3, 0, 1)) ** 0.6
    if side > 0:  # the aortic knob bulges into the left lung's medial border
        medial = medial + 0.07 * np.exp(-(((f.y + 0.34) / 0.07) ** 2))
    # diaphragm: dome highest a third of the way out, deepest at the sharp costophrenic angle
    w = np.clip((A - an.lung_medial) / (an.lung_lateral - an.lung_medial), 0, 1)
    g = np.where(w < 0.38, 1 - 0.45 * ((0.38 - w) / 0.38) ** 2, 1 - (np.maximum(w - 0.38, 0) / 0.62) ** 1.6)
    diaphragm = cp - an.dome * g
    d = np.minimum(np.minimum(A - medial, lateral - A), np.minimum(diaphragm - f.y, f.y - top))
    u = (A - medial) / np.maximum(lateral - medial, 1e-3)
    # the rib cage: the lung and its chest wall, closing over the apex onto the spine, fading out
    # below the costophrenic angles (the lowest ribs hardly show through the upper abdomen)
    over_apex = apex_a + 0.08 - (apex_a + 0.03) * np.clip((top - f.y) / 0.16, 0, 1) ** 2
    cage = np.where(f.y < top, over_apex, lateral + 0.08)
    return {
        "mask": f.soft(d, 0.012),
        "depth": np.clip(d / 0.18, 0, 1) ** 0.6,
        "t": t,
        "u": u,
        "diaphragm": diaphragm,
        "cage": f.soft(cage - A, 0.03) * f.soft(A + 0.1, 0.01) * f.soft(cp + 0.12 - f.y, 0.05),
    }


def _heart(f: _Frame, an: Anatomy, ap: bool) -> np.ndarray:
    """The cardiac silhouette: an ellipse tilted down to the patient's left (image right), resting
    on the diaphragm; magnified on AP films (the heart is farther from the detector)."""
    s = an.heart_size * (1.12 if ap else 1.0)
    a, b, phi = 0.4 * s, 0.26 * s, math.radians(32)
    px, py = f.x - an.heart_x, f.y - an.heart_y
    p = math.cos(phi) * px + math.sin(phi) * py
    q = -math.sin(phi) * px + math.cos(phi) * py
    return f.soft((1 - np.sqrt((p / a) ** 2 + (q / b) ** 2)) * b, 0.01)


def _ribs(f: _Frame, an: Anatomy, cage: np.ndarray) -> np.ndarray:
    """Posterior ribs (arcs rising a little from the spine, then curving down at the chest wall, with
    bright cortical margins) and fainter anterior ribs (running down and in from the chest wall).
    Rib k leaves the spine at ``rib_top + gap * (k + 0.03 k^2)`` (the lower spaces are wider) and
    all ribs follow one curve, so a pixel's nearest rib is a rounding, not a loop over ribs."""
    A, y, gap, a = f.ax, f.y, an.rib_gap, 0.03

    def nearest(raw: np.ndarray, slope: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        kc = (np.sqrt(np.maximum(1 + 4 * a * raw, 0)) - 1) / (2 * a)  # raw = k + a k^2, solved for k
        k = np.round(kc)
        return k, np.abs(kc - k) * gap * (1 + 2 * a * k) / np.sqrt(1 + slope**2)

    k, dist = nearest((y - an.rib_top - (-0.12 * A + 0.5 * A**2)) / gap, A - 0.12)
    half = 0.02 + 0.012 * A
    ribs = 0.5 * f.soft(half - dist, 0.008) + 0.45 * np.exp(-(((dist - 0.85 * half) / (0.22 * half)) ** 2))
    ribs *= f.soft(A - 0.07, 0.01) * ((k >= 1) & (k <= 10))
    # anterior ribs: from where the posterior rib meets the chest wall, down and in, fading medially
    lat = an.body_width - 0.05
    run = lat - A
    k, dist = nearest((y - an.rib_top - (-0.12 * lat + 0.5 * lat**2) - 0.5 * run - 0.2 * run**2) / gap, 0.5 + 0.4 * run)
    fade = np.clip((A - 0.3) / 0.3, 0, 1)
    ribs += 0.45 * f.soft(0.017 - dist, 0.01) * fade * ((k >= 1) & (k <= 7))
    return ribs * cage


def _clavicles(f: _Frame, an: Anatomy, ap: bool) -> np.ndarray:
    """Two gently S-shaped bones from the sternum out and up to the shoulders (higher on AP films)."""
    A = f.ax
    y0 = an.apex_y + 0.11 - (0.08 if ap else 0.0)
    s = np.clip((A - 0.07) / 0.72, 0, 1)
    dist = np.abs(f.y - (y0 - 0.22 * s + 0.025 * np.sin(2 * np.pi * s)))
    half = 0.034 - 0.01 * s
    bone = f.soft(half - dist, 0.008) * 0.75 + 0.35 * np.exp(-(((dist - 0.85 * half) / (0.25 * half)) ** 2))
    return bone * f.soft(A - 0.07, 0.015) * f.soft(0.79 - A, 0.012)


def _spine(f: _Frame) -> np.ndarray:
    """Vertebral bodies with darker disc spaces and paired pedicles, seen faintly through the
    mediastinum."""
    half = 0.07 + 0.02 * np.clip(f.y, 0, 1)
    column = f.soft(half - f.ax, 0.012)
    ph = (f.y / 0.118) % 1.0
    discs = 1 - 0.3 * np.exp(-(((ph - 0.5) / 0.1) ** 2))
    pedicles = np.exp(-(((f.ax - 0.75 * half) / 0.014) ** 2 + ((ph - 0.22) / 0.13) ** 2))
    return column * discs + 0.4 * pedicles * column


def _vessel_tree(rng: np.random.Generator, an: Anatomy, max_depth: int = 5) -> np.ndarray:
    """Pulmonary vessels as segments (x0, y0, x1, y1, weight) branching out from each hilum; the
    weight (1 for a trunk) shrinks at each branching, so the lung periphery shows few vessels."""
    segs: list[tuple[float, float, float, float, float]] = []
    for side in (-1, 1):
        hx, hy = side * (an.lung_medial + 0.06), -0.08 + rng.uniform(-0.03, 0.03)
        # trunks leave the hilum at different heights, by angle below the horizontal, outward:
        # to the upper zone, out, and down (the lower zones hold more, larger vessels)
        trunks = ((-80, -0.08, 0.16), (-40, -0.04, 0.14), (5, 0.0, 0.14), (40, 0.05, 0.17), (70, 0.09, 0.18))
        for ang0, dy, length in trunks:
            stack = [(hx, hy + dy, math.radians(ang0 + rng.uniform(-10, 10)), length, 1.0, 0)]
            while stack:
                x0, y0, ang, ln, w, depth = stack.pop()
                x1 = x0 + side * ln * math.cos(ang)
                y1 = y0 + ln * math.sin(ang)
                segs.append((x0, y0, x1, y1, w))
                if depth < max_depth:
                    for turn in (-1, 1):
                        stack.append(
                            (
                                x1,
                                y1,
                                ang + turn * math.radians(rng.uniform(15, 35)),
                                ln * rng.uniform(0.65, 0.85),
                                w * 0.66,
                                depth + 1,
                            )
                        )
    return np.array(segs, dtype=np.float32)


# --------------------------------------------------------------------------------------------------
# Disease drawn (as a map 0-1 of how much of the air space is filled)
# --------------------------------------------------------------------------------------------------


def _covid_opacity(f: _Frame, lungs: list[dict], an: Anatomy, severity: float, rng: np.random.Generator) -> np.ndarray:
    """Ground glass: bilateral, peripheral, lower-zone predominant, hazy and multifocal.

    The foci belong to the patient (drawn from ``an.seed``), so follow-ups show the same foci growing
    or clearing; their patchy texture changes from film to film."""
    sites = np.random.default_rng([an.seed, 1])
    spread = 0.6 + 0.8 * severity
    field = np.zeros_like(f.x)
    for lung in lungs:
        for _ in range(int(sites.integers(2, 5))):
            u0 = sites.uniform(0.65, 1.0)  # peripheral
            t0 = 0.4 + 0.55 * sites.beta(2.5, 1.2)  # lower zones predominate
            su, st = sites.uniform(0.15, 0.26) * spread, sites.uniform(0.14, 0.26) * spread
            g = np.exp(-(((lung["u"] - u0) / su) ** 2 + ((lung["t"] - t0) / st) ** 2))
            field += sites.uniform(0.7, 1.0) * g * lung["mask"]
    patchy = np.clip(0.8 + 0.35 * _smooth_noise(rng, f.size, f.size / 30), 0.2, 1.5)
    peak = 0.3 + 0.35 * severity  # severe disease reaches consolidation
    return peak * np.tanh(1.6 * field * patchy)


def _lobar_opacity(
    f: _Frame, lungs: list[dict], an: Anatomy, severity: float, rng: np.random.Generator, airways: np.ndarray
) -> tuple[np.ndarray, str]:
    """Lobar consolidation: one lobe of one lung, dense, sharp where it meets a fissure and less so
    elsewhere, with air bronchograms (airways stay dark inside the filled lobe)."""
    sites = np.random.default_rng([an.seed, 2])
    lobe = ("RUL", "RML", "RLL", "LUL", "LLL")[int(sites.choice(5, p=[0.2, 0.15, 0.3, 0.1, 0.25]))]
    lung = lungs[0] if lobe[0] == "R" else lungs[1]
    t, u = lung["t"], lung["u"]
    fill = 0.45 + 0.55 * severity  # how far the consolidation has spread through its lobe
    fissure = sites.uniform(0.4, 0.47) + 0.05 * np.sin(np.pi * np.clip(u, 0, 1))  # the minor fissure
    wobble = 0.06 * _smooth_noise(np.random.default_rng([an.seed, 3]), f.size, f.size / 16)
    sharp = np.ones_like(t)
    if lobe == "RUL":
        sharp = fissure - t
        fuzzy = t - 0.45 * (1 - fill) + wobble
    elif lobe == "RML":
        sharp = t - fissure
        fuzzy = np.minimum(0.45 + 0.3 * fill - u + wobble, 0.95 - t)
    elif lobe == "LUL":
        fuzzy = np.minimum(0.58 - t + wobble, t - 0.5 * (1 - fill) + wobble)
    else:  # lower lobes fill from the base up, with no fissure seen on a frontal film
        fuzzy = t - (1 - 0.6 * fill) + 0.15 * (1 - u) + wobble
    core = f.soft(sharp, 0.006) * f.soft(fuzzy, 0.035) * lung["mask"]
    texture = 1 + 0.08 * _smooth_noise(rng, f.size, f.size / 40)
    density = sites.uniform(0.78, 0.95) * (0.85 + 0.15 * severity)
    halo = _blur(core, f.size / 40)  # a rim of ground glass around it
    o = density * core * texture * (1 - 0.35 * np.clip(airways, 0, 1)) + 0.25 * halo * (1 - core)
    return np.clip(o, 0, 1), lobe


# --------------------------------------------------------------------------------------------------
# The radiograph
# --------------------------------------------------------------------------------------------------


def _score(o: np.ndarray, lung: np.ndarray) -> tuple[int, int, float]:
    """(geographic 0-4, opacity 0-4, fraction involved) of one lung, measured on the drawn maps."""
    area = max(int(lung.sum()), 1)
    involved = int(((o >= INVOLVED) & lung).sum())
    consolidated = int(((o >= CONSOLIDATED) & lung).sum())
    frac = involved / area
    if frac < 0.01:  # under 1 % of a lung: nothing a reader would call involvement
        return 0, 0, frac
    geographic = 1 + int(frac >= 0.25) + int(frac >= 0.5) + int(frac >= 0.75)
    if consolidated / area > 0.75:
        opacity = 4  # white-out
    elif consolidated >= 0.5 * involved:
        opacity = 3  # mostly consolidation
    elif consolidated >= 0.1 * involved:
        opacity = 2  # consolidation among ground glass
    else:
        opacity = 1  # ground glass
    return geographic, opacity, frac


def _burn_marker(img: np.ndarray) -> None:
    """A burnt-in lead side marker: a saturated block with a blocky "L" knocked out, top right."""
    s = img.shape[0]
    m = max(8, s // 11)
    r0, c0 = s // 25, s - s // 25 - m
    img[r0 : r0 + m, c0 : c0 + m] = 250
    b = max(2, m // 5)
    img[r0 + b : r0 + m - b, c0 + b : c0 + 2 * b] = 30  # the stem of the L
    img[r0 + m - 2 * b : r0 + m - b, c0 + b : c0 + m - b] = 30  # its foot


def draw_radiograph(
    rng: np.random.Generator,
    size: int = 256,
    label: str = "normal",
    *,
    anatomy: Anatomy | None = None,
    severity: float | None = None,
    view: str = "PA",
    shortcut: str | None = None,
    contrast: float = 1.0,
) -> tuple[np.ndarray, dict]:
    """Draw one frontal chest radiograph; return it (uint8, size x size) and what was drawn.

    ``anatomy`` is the patient (sampled from ``rng`` when None; pass the same one for follow-ups);
    ``severity`` in [0, 1] scales the disease (drawn from ``rng`` when None; 0 for normal);
    ``shortcut`` plants "marker" or "offset"; ``contrast`` scales the disease's opacity map (below 1: a
    fainter disease, its severity scores measured on what is drawn). The truth dict holds ``label``,
    ``severity``, ``view``,
    ``geographic`` and ``opacity`` (0-8) with their per-lung parts, ``extent`` (fraction of each lung
    involved), ``lobe`` (of a lobar pneumonia: RUL, RML, RLL, LUL or LLL), ``shortcut``, and the
    maps they were measured on: ``lung_right`` / ``lung_left`` (bool, the lung fields the heart does
    not hide; the patient's right lung is on the image's left) and ``opacity_map`` (float32, 0-1); and
    ``lungs`` (bool, both lungs whole, behind the heart too, down to the diaphragm: what the V7 Labs
    annotators outline, and what ``write_phantom_dataset`` writes as the image's lung mask)."""
    _check_draw_args(size, label, shortcut)
    # the draws from ``rng`` happen in this order: anatomy (when None), severity (when None), pose and
    # breath, the findings' texture, then exposure and noise
    an = anatomy if anatomy is not None else sample_anatomy(rng)
    if label == "normal":
        severity = 0.0
    severity = float(np.clip(rng.uniform(0.3, 0.9) if severity is None else severity, 0, 1))
    ap = view.upper().startswith("AP")

    # this film: the patient placed a little differently, another breath, another exposure
    f = _Frame(size, an, rng.normal(0, [0.01, 0.012, 0.012, math.radians(0.8)]))
    inspiration = float(rng.normal(0, 0.02))
    body = _draw_anatomy(f, an, inspiration, ap)
    o, lobe = _draw_findings(f, an, label, severity, rng, body)
    o = o * np.float32(contrast) if contrast != 1 else o
    img = _expose(rng, f, an, _attenuation(f, an, ap, body, o))
    img = _plant_shortcut(img, shortcut)
    return img, _truth(label, severity, ap, shortcut, o, lobe, body["visible"], body["lungs"])


def _check_draw_args(size: int, label: str, shortcut: str | None) -> None:
    if label not in CLASSES:
        raise ConfigError(f"unknown label {label!r}; expected one of {', '.join(CLASSES)}")
    if shortcut is not None and shortcut not in SHORTCUTS:
        raise ConfigError(f"unknown shortcut {shortcut!r}; expected None or one of {', '.join(SHORTCUTS)}")
    if size < 64:
        raise ConfigError(f"size must be at least 64 px, not {size}")


def _draw_anatomy(f: _Frame, an: Anatomy, inspiration: float, ap: bool) -> dict:
    """The patient's structures on this film: body, lungs, heart, the lung fields it leaves visible and the
    vessel tree (drawn from ``an.seed``, not from the film's RNG)."""
    structure = np.random.default_rng([an.seed, 0])
    thick, body = _body(f, an)
    lungs = [_lung(f, an, side, inspiration, ap) for side in (-1, 1)]  # patient's right, then left
    heart = _heart(f, an, ap)
    visible = [lung["mask"] * (1 - 0.85 * heart) for lung in lungs]  # the heart hides the left base
    tree = _vessel_tree(structure, an)
    vessels = f.splat(tree[tree[:, 4] > 0.45], 0.013) + f.splat(tree[tree[:, 4] <= 0.45], 0.008)
    return {
        "thick": thick,
        "body": body,
        "lungs": lungs,
        "heart": heart,
        "visible": visible,
        "tree": tree,
        "vessels": vessels,
    }


def _draw_findings(
    f: _Frame, an: Anatomy, label: str, severity: float, rng: np.random.Generator, body: dict
) -> tuple[np.ndarray, str | None]:
    """The disease as an opacity map (float32, 0-1, inside the lungs) and the lobe of a lobar pneumonia."""
    lungs, tree = body["lungs"], body["tree"]
    lobe = None
    if label == "COVID-19":
        o = _covid_opacity(f, lungs, an, severity, rng)
    elif label == "pneumonia":
        airways = f.splat(tree[tree[:, 4] > 0.45], 0.005)
        o, lobe = _lobar_opacity(f, lungs, an, severity, rng, airways)
    else:
        o = np.zeros_like(f.x)
    o = (np.clip(o, 0, 1) * np.maximum(lungs[0]["mask"], lungs[1]["mask"])).astype(np.float32)
    return o, lobe


def _attenuation(f: _Frame, an: Anatomy, ap: bool, body: dict, o: np.ndarray) -> np.ndarray:
    """Attenuation: soft tissue, less where the lungs hold air (fluid in the air spaces takes the air's
    place), more for bone, heart and vessels; then hila, humeral heads, trachea and gastric bubble."""
    thick, envelope, lungs, heart, visible = body["thick"], body["body"], body["lungs"], body["heart"], body["visible"]
    lung_field = visible[0] + visible[1]
    air = visible[0] * (0.72 + 0.18 * lungs[0]["depth"]) + visible[1] * (0.72 + 0.18 * lungs[1]["depth"])
    att = 1.25 * thick * (1 - air * (1 - 0.95 * o))
    cage = np.maximum(lungs[0]["cage"], lungs[1]["cage"])
    att += 0.15 * _ribs(f, an, cage) * (0.4 + 0.6 * lung_field) + 0.32 * _clavicles(f, an, ap) * envelope
    att += 0.04 * heart + 0.12 * _spine(f) * envelope + 0.22 * body["vessels"] * lung_field * (1 - o)
    for side in (-1, 1):
        hilum = np.exp(-(((f.x - side * (an.lung_medial + 0.06)) / 0.08) ** 2 + ((f.y + 0.06) / 0.13) ** 2))
        humerus = f.soft(0.14 - np.hypot(f.x - side * (an.body_width + 0.2), f.y - an.apex_y - 0.05), 0.015)
        att += 0.25 * hilum * envelope + 0.4 * humerus * envelope
    att -= 0.3 * f.soft(0.03 - f.ax, 0.01) * f.soft(-0.3 - f.y, 0.04) * envelope  # trachea, down to the carina
    if an.gastric_bubble:
        gy = lungs[1]["diaphragm"] + 0.08
        att -= 0.45 * f.soft(1 - np.hypot((f.x - 0.42) / 0.1, (f.y - gy) / 0.055), 0.1) * (f.y > gy - 0.03)
    return att


def _expose(rng: np.random.Generator, f: _Frame, an: Anatomy, att: np.ndarray) -> np.ndarray:
    """The film (1 - exp(-attenuation), so bone shows well against air and hardly against the mediastinum,
    as on a real film): exposure and contrast, mottle and grain, slight vignetting; as uint8."""
    size = f.size
    film = 1 - np.exp(-np.maximum(att, 0))
    film = film**an.gamma * an.exposure * float(rng.uniform(0.97, 1.03))
    film += 0.015 * _smooth_noise(rng, size, size / 24) + 0.005 * rng.standard_normal((size, size), dtype=np.float32)
    c = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
    film *= 1 - 0.08 * (c[None, :] ** 2 + c[:, None] ** 2)
    return np.clip(np.rint(film * 255), 0, 255).astype(np.uint8)


def _plant_shortcut(img: np.ndarray, shortcut: str | None) -> np.ndarray:
    """The planted confounder, if any: every pixel brighter ("offset") or a burnt-in marker ("marker")."""
    if shortcut == "offset":
        img = np.clip(img.astype(np.int16) + OFFSET_GREY_LEVELS, 0, 255).astype(np.uint8)
    elif shortcut == "marker":
        _burn_marker(img)
    return img


def _truth(
    label: str,
    severity: float,
    ap: bool,
    shortcut: str | None,
    o: np.ndarray,
    lobe: str | None,
    visible: list,
    lungs: list,
) -> dict:
    """What was drawn, with the severity scores measured on the opacity map inside the visible lung fields."""
    right, left = visible[0] > 0.5, visible[1] > 0.5
    g_r, o_r, e_r = _score(o, right)
    g_l, o_l, e_l = _score(o, left)
    return {
        "label": label,
        "severity": severity,
        "view": "AP" if ap else "PA",
        "geographic": g_r + g_l,
        "opacity": o_r + o_l,
        "geographic_per_lung": {"right": g_r, "left": g_l},
        "opacity_per_lung": {"right": o_r, "left": o_l},
        "extent": {"right": e_r, "left": e_l},
        "lobe": lobe,
        "shortcut": shortcut,
        "lung_right": right,
        "lung_left": left,
        "lungs": (lungs[0]["mask"] > 0.5) | (lungs[1]["mask"] > 0.5),
        "opacity_map": o,
    }


# --------------------------------------------------------------------------------------------------
# The dataset: cohen layout, follow-ups, planted shortcut
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Job:
    """One image to draw: everything a worker needs, so images can be drawn in any order."""

    seed: int
    index: int  # the image's RNG is SeedSequence(seed, spawn_key=(1, index))
    patient: int  # the anatomy's RNG is SeedSequence(seed, spawn_key=(0, patient))
    label: str
    severity: float
    view: str
    shortcut: str | None
    size: int
    path: str
    contrast: float = 1.0


def _quotas(n: int, mix: dict[str, float]) -> dict[str, int]:
    """Images per class: ``n`` split by ``mix`` with largest remainders, so a demo of 12 has 4 each."""
    total = sum(mix.values())
    exact = {c: n * mix.get(c, 0.0) / total for c in CLASSES}
    quotas = {c: int(exact[c]) for c in CLASSES}
    for c in sorted(CLASSES, key=lambda c: quotas[c] - exact[c])[: n - sum(quotas.values())]:
        quotas[c] += 1
    return quotas


def _plan(config: SynthConfig) -> tuple[list[dict], list[_Job]]:
    """Patients, their follow-ups and metadata rows (truth columns still empty), and the jobs.

    Labels are drawn per patient in proportion to what each class still lacks, so the classes end
    exactly at their quotas; a patient keeps one label, one hospital and one anatomy throughout."""
    rng = np.random.default_rng(np.random.SeedSequence(config.seed, spawn_key=(2,)))
    quotas = _quotas(config.n, config.class_mix)
    lo, hi = config.images_per_patient
    rows: list[dict] = []
    jobs: list[_Job] = []
    patient = 0
    while len(rows) < config.n:
        left = np.array([quotas[c] for c in CLASSES], dtype=float)
        label = CLASSES[int(rng.choice(len(CLASSES), p=left / left.sum()))]
        count = min(int(rng.integers(lo, hi + 1)), quotas[label])
        quotas[label] -= count
        patient += 1
        hospital = int(rng.integers(config.hospitals))
        sex, age = ("M", "F")[int(rng.integers(2))], int(rng.integers(20, 91))
        view = "AP" if rng.random() < config.ap_fraction else "PA"
        finding = FINDINGS[label][int(rng.integers(len(FINDINGS[label])))]
        first = FIRST_DATE + dt.timedelta(days=int(rng.integers(0, 150)))
        # the seed is in the id: phantoms of two seeds are different people, and a build that merges
        # sources takes a non-numeric id for an identity (plain integers are per-source counters)
        pid = f"phantom-s{config.seed}-p{patient:04d}"
        severity, offset = (float(rng.uniform(*config.severity)) if label != "normal" else 0.0), 0
        planted = (
            config.shortcut
            if (hospital == config.shortcut_hospital and config.shortcut_label in (None, label))
            else None
        )
        for k in range(count):
            if k:  # a follow-up: days later, the disease grown or regressed
                offset += int(rng.integers(2, 9))
                if label != "normal":
                    severity = float(np.clip(severity + rng.normal(0.05, 0.2), 0.15, 1.0))
            index = len(rows)
            date = first + dt.timedelta(days=offset)
            filename = f"{pid}-{k + 1}.png"
            rows.append(
                {
                    **{c: "" for c in COHEN_COLUMNS},
                    "patientid": pid,
                    "offset": str(offset),
                    "sex": sex,
                    "age": str(age),
                    "finding": finding,
                    "RT_PCR_positive": "Y" if label == "COVID-19" else "",
                    "view": view,
                    "modality": "X-ray",
                    "date": f"{date:%B} {date.day}, {date.year}",
                    "location": hospital_name(hospital),
                    "folder": "images",
                    "filename": filename,
                    "license": "CC0",
                    "other_notes": f"Synthetic phantom (covidnet.data.synth, seed {config.seed}, image {index}); "
                    "not a patient.",
                    "phantom_shortcut": planted or "none",
                    "phantom_hospital": str(hospital),
                }
            )
            jobs.append(
                _Job(
                    config.seed, index, patient, label, severity, view, planted, config.size, filename, config.contrast
                )
            )
    return rows, jobs


def _notes(truth: dict) -> str:
    """A radiologist's one line on what was drawn."""
    g, o = truth["geographic"], truth["opacity"]
    if truth["label"] == "normal":
        return "Phantom. Clear lungs; normal heart size; no effusion."
    if truth["label"] == "COVID-19":
        return (
            f"Phantom. Bilateral peripheral ground-glass opacities, lower-zone predominant; "
            f"geographic extent {g}/8, opacity {o}/8."
        )
    lobe = {
        "RUL": "right upper",
        "RML": "right middle",
        "RLL": "right lower",
        "LUL": "left upper",
        "LLL": "left lower",
    }[truth["lobe"]]
    return (
        f"Phantom. Lobar consolidation of the {lobe} lobe with air bronchograms; "
        f"geographic extent {g}/8, opacity {o}/8."
    )


def _save_png(img: np.ndarray, path: Path) -> None:
    from PIL import Image  # Pillow comes with torchvision

    Image.fromarray(img).save(path, format="PNG", compress_level=6)


def _render(job_and_dir: tuple[_Job, str]) -> dict:
    """Draw and save one image; return its truth columns. Runs in a worker process."""
    job, folder = job_and_dir
    anatomy = sample_anatomy(np.random.default_rng(np.random.SeedSequence(job.seed, spawn_key=(0, job.patient))))
    rng = np.random.default_rng(np.random.SeedSequence(job.seed, spawn_key=(1, job.index)))
    img, truth = draw_radiograph(
        rng,
        job.size,
        job.label,
        anatomy=anatomy,
        severity=job.severity,
        view=job.view,
        shortcut=job.shortcut,
        contrast=job.contrast,
    )
    _save_png(img, Path(folder) / job.path)
    _save_png(np.where(truth["lungs"], 255, 0).astype(np.uint8), Path(folder).parent / MASKS_DIR / job.path)
    return {
        "phantom_geographic": str(truth["geographic"]),
        "phantom_opacity": str(truth["opacity"]),
        "phantom_extent_right": f"{truth['extent']['right']:.3f}",
        "phantom_extent_left": f"{truth['extent']['left']:.3f}",
        "clinical_notes": _notes(truth),
    }


def write_phantom_dataset(
    out_dir: str | os.PathLike,
    config: SynthConfig | None = None,
    *,
    progress: bool = True,
    workers: int | None = None,
) -> Path:
    """Write ``config.n`` phantoms as a cohen dataset: ``out_dir/metadata.csv`` and ``out_dir/images/``, with
    each image's true lung mask (``truth["lungs"]`` of ``draw_radiograph``) under ``out_dir/lungmasks/`` in the
    V7 Labs masks' form (same name, 0 background, 255 lung): ``data build --lung-masks phantom=out_dir/lungmasks``.

    Deterministic: the same config gives byte-identical files, however many workers draw them.
    Atomic: everything is written into a hidden sibling folder that is renamed to ``out_dir`` only
    when complete, so an interrupted run never leaves a dataset that looks whole. ``out_dir`` must
    not exist or be empty. ``workers``: processes to draw with (default: a pool of up to 8 when
    ``n >= 64``, else this process). Returns ``out_dir``."""
    config = (config or SynthConfig()).validate()
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out}: already exists and is not an empty folder; choose a new one or remove it")
    rows, jobs = _plan(config)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp's 0700 would survive the rename
        (tmp / "images").mkdir()
        (tmp / MASKS_DIR).mkdir()
        if workers is None:
            workers = min(os.cpu_count() or 1, 8) if config.n >= 64 else 1
        from tqdm import tqdm

        bar = tqdm(total=config.n, desc=f"phantoms -> {out.name}", unit="img", file=sys.stderr, disable=not progress)
        tasks = [(job, str(tmp / "images")) for job in jobs]
        if workers > 1:
            with multiprocessing.Pool(workers) as pool:
                for row, truth in zip(rows, pool.imap(_render, tasks, chunksize=max(1, config.n // (workers * 8)))):
                    row.update(truth)
                    bar.update()
        else:
            for row, task in zip(rows, tasks):
                row.update(_render(task))
                bar.update()
        bar.close()
        with open(tmp / "metadata.csv", "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=[*COHEN_COLUMNS, *PHANTOM_COLUMNS], lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
        if out.exists():  # empty (checked above); a folder that filled up meanwhile makes rmdir fail
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def write_severity_file(
    phantom_dir: str | os.PathLike, path: str | os.PathLike, labels: tuple[str, ...] = ("COVID-19",)
) -> Path:
    """The true severity of a phantom dataset's images of ``labels`` as a severity file in the layout of
    COVIDNet-S's ``severity_annotations.csv`` (``filename, Geographic, Opacity, Sum, Product, patientid,
    dataset``): the known answer for ``covidnet data build --severity``. Written atomically."""
    src = Path(phantom_dir) / "metadata.csv"
    if not src.is_file():
        raise ConfigError(f"{src}: not found; is {phantom_dir} a folder written by write_phantom_dataset?")
    with open(src, newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if any(r["finding"] in FINDINGS[c] for c in labels)]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["filename", "Geographic", "Opacity", "Sum", "Product", "patientid", "dataset"])
        for r in rows:
            g, o = int(r["phantom_geographic"]), int(r["phantom_opacity"])
            w.writerow([r["filename"], g, o, g + o, g * o, r["patientid"], "cohen"])
    return path


def contact_sheet(images: list[np.ndarray], labels: list[str], path: str | os.PathLike, cols: int = 6) -> Path:
    """A PNG grid of greyscale images, each with its label written under it (for docs and eyeballs)."""
    from PIL import Image, ImageDraw, ImageFont

    if not images or len(images) != len(labels):
        raise ConfigError(
            f"contact_sheet needs one label per image and at least one image "
            f"(got {len(images)} images, {len(labels)} labels)"
        )
    cell = max(max(im.shape[:2]) for im in images)
    try:
        font = ImageFont.load_default(size=max(10, cell // 18))
    except (TypeError, OSError):  # a Pillow without FreeType: the fixed bitmap font
        font = ImageFont.load_default()
    pad, text_h = max(4, cell // 40), max(14, cell // 18 + 8)
    cols = max(1, min(cols, len(images)))
    rows = math.ceil(len(images) / cols)
    sheet = Image.new("L", (cols * (cell + pad) + pad, rows * (cell + text_h + pad) + pad), 24)
    draw = ImageDraw.Draw(sheet)
    for i, (im, label) in enumerate(zip(images, labels)):
        x, y = pad + (i % cols) * (cell + pad), pad + (i // cols) * (cell + text_h + pad)
        sheet.paste(Image.fromarray(np.asarray(im, dtype=np.uint8)), (x, y))
        width = draw.textlength(label, font=font)
        draw.text((x + (cell - width) / 2, y + cell + 3), label, fill=235, font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, format="PNG", optimize=True)
    return path
