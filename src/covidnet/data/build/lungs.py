"""The lung-mask stage of a build: ``--lungs MODEL``'s masks for the stored images without an annotated one,
written into their rows of ``masks.npy``; and the report's ``lung_masks`` section.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..lungmasks import NAME_KEY, PREDICTED, finish_section
from .config import BuildConfig


def predict_masks(tmp: Path, cfg: BuildConfig, records, order: list[int], segmenter) -> dict:
    """``--lungs CKPT``: masks for the stored images without an annotated one, drawn by ``segmenter`` (the
    model ``_check_config`` opened) and written into their rows of ``masks.npy``; those records are marked
    predicted (the index says so)."""
    from ...lungs.fill import segment_store_rows  # torch only for a .pt segmenter

    rows = [row for row, i in enumerate(order) if not records[order[row]].extra.get(NAME_KEY)]
    info = segment_store_rows(segmenter, tmp, np.array(rows, dtype=np.int64), cfg.progress, cfg.processes)
    for row in rows:
        records[order[row]].extra[NAME_KEY] = PREDICTED
    return info


def masks_section(masks, later, predicted, records, order, split_of) -> dict | None:
    """The report's ``lung_masks``: the annotated sets' join and what reached the store, and the predicted
    masks of ``--lungs``."""
    if masks is None and predicted is None:
        return None
    section = finish_section(masks or {"sets": [], "excluded": {"items": []}}, later, records, order, split_of)
    section["predicted"] = predicted
    return section
