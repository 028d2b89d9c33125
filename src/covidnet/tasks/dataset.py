"""A built dataset's split as a ``torch.utils.data.Dataset``, for a researcher's own training loop or
analysis: item ``k`` is ``(image, target)``, the image the stored pixels of the split's ``k``-th row the task
can use, a float tensor (1, S, S) in [0, 1] (``contract.uint8_to_unit``; the model's half of the contract,
``contract.model_input``, is the model's to apply), and the target the task's (a class index, two severity
scores, a risk bin, or a lung mask (S, S) uint8 for segmentation). Rows are read one at a time
(``Store.read``), so a store of any size is never read whole.

>>> from covidnet import StoreDataset
>>> ds = StoreDataset("demo/dataset", "train")
>>> loader = torch.utils.data.DataLoader(ds, batch_size=8, shuffle=True)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..data.store import Store, open_store
from . import task_class


class StoreDataset(torch.utils.data.Dataset):
    """``data``: a built dataset's folder (or an opened ``Store``); ``split``: train, val, test (None: every
    row); ``task``: whose rows and targets (classification by default; ``binary`` for its two classes)."""

    def __init__(
        self, data: str | Path | Store, split: str | None = None, task: str = "classification", binary: bool = False
    ):
        self.store = data if isinstance(data, Store) else open_store(data)
        t = task_class(task)
        self.task = t(classes=("negative", "positive")) if binary else t()
        self.rows = self.task.rows(self.store, split)
        self.targets = self.task.targets(self.store, self.rows)
        self.contract = self.store.contract

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, k: int):
        row = self.rows[[k]]
        image = torch.from_numpy(self.store.read(row)[0]).unsqueeze(0).float().div_(255)
        if self.targets is None:  # segmentation: the stored mask (0 background, 127 ignore, 255 lung)
            return image, torch.from_numpy(np.ascontiguousarray(self.store.read_masks(row)[0]))
        return image, torch.as_tensor(self.targets[k])
