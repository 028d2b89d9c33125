"""Where the lungs are, for the occlusion test (what it hides) and the attention test (what it counts).

A dataset built with lung masks (``data build --lung-masks``, annotated, or ``--lungs CKPT``, drawn by a lung
model) gives each image its own, dilated by ``LUNG_MARGIN`` (``LungFields``). An image without a mask falls
back to a fixed central box (``LUNG_BOX``), which holds a median 81 % of the real lung pixels and is a third
non-lung; ``LungFields.describe`` and ``said`` tell which images had which.
"""

from __future__ import annotations

import numpy as np

from ..contract import LUNG_MARGIN
from ..data.lungmasks import PREDICTED, lung_field

# the lung fields of a stored (top-cropped, square) frontal radiograph: a fixed central region
LUNG_BOX = (0.12, 0.06, 0.88, 0.82)  # x0, y0, x1, y1 as fractions of the side


def box_region(side: int) -> np.ndarray:
    """The fixed lung box (``LUNG_BOX``) as a (side, side) bool region."""
    region = np.zeros((side, side), bool)
    x0, y0, x1, y1 = (round(v * side) for v in LUNG_BOX)
    region[y0:y1, x0:x1] = True
    return region


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
