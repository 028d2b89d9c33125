"""Draw ``docs/phantoms.png``: 12 chest X-ray phantoms, 4 per class, 256 px, seed 0.

Run from the repository root: ``.venv/bin/python docs/make_phantoms.py``. Each label gives the class
and the severity truth measured on the drawn opacity (geographic extent and opacity, each 0-8).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from covidnet.data.synth import contact_sheet, draw_radiograph

SEED, SIZE, PER_CLASS = 0, 256, 4


def main() -> Path:
    images, labels = [], []
    for c, label in enumerate(("normal", "pneumonia", "COVID-19")):
        for k in range(PER_CLASS):
            rng = np.random.default_rng(np.random.SeedSequence(SEED, spawn_key=(c, k)))
            img, truth = draw_radiograph(rng, SIZE, label)
            images.append(img)
            if label == "normal":
                labels.append(f"normal ({truth['view']})")
            else:
                where = f"{truth['lobe']}, " if truth["lobe"] else ""
                labels.append(f"{label} ({where}geo {truth['geographic']}, opac {truth['opacity']})")
    return contact_sheet(images, labels, Path(__file__).with_name("phantoms.png"), cols=PER_CLASS)


if __name__ == "__main__":
    path = main()
    print(f"{path} ({path.stat().st_size / 1024:.0f} KB)")
