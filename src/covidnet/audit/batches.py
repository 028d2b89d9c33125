"""How the audit's tests read images: a batch at a time, so that a store is never in memory whole."""

from __future__ import annotations

import numpy as np

CHUNK = 256  # images a test holds at a time


def chunks(images, size: int = CHUNK):
    """An array of images, or a store's ``RowsView``, ``size`` images at a time."""
    for k in range(0, len(images), size):
        yield np.asarray(images[k : k + size])
