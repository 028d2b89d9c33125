"""Which images a step takes: every random choice is derived from (seed, epoch, step), so a run killed at
any step and resumed takes exactly the steps an uninterrupted run would have taken, on one process or many.

``epoch_batches`` is the one sampler of every task: a permutation cut into batches by default; the
reference's rebalancing of one class (classification's COVID-19, ``--covid-percent``) and drawing each
source of a class equally often (``--balance-sources``) where the task asks for them (``Task.sampling``).
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import ConfigError


def step_seed(seed: int, epoch: int, step: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, step]).generate_state(1)[0])


def epoch_batches(
    labels: np.ndarray,
    epoch: int,
    seed: int,
    batch_size: int,
    covid_class: int | None = None,
    covid_percent: float = 0.0,
    groups: np.ndarray | None = None,
    temper: float = 1.0,
) -> list[np.ndarray]:
    """The global batches of one epoch, as positions into ``labels`` (the training rows).

    Without rebalancing: a permutation cut into batches, so every image is seen exactly once per
    epoch; the remainder is spread over the batches rather than dropped or padded. With rebalancing:
    every non-COVID-19 image once, and ``round(covid_percent * batch_size)`` COVID-19 images per batch
    drawn from a cycling permutation of the COVID-19 images (oversampled, as in the reference).

    With ``groups`` (each image's source, ``--balance-sources``): as many images of each class as above,
    drawn with replacement, each with weight (the size of its source's share of the class)^-``temper``: 1 draws
    every source of a class equally often, 0 keeps the natural mix (``--balance-temper``)."""
    rng = np.random.default_rng([seed, epoch, 0xBA7C4])
    n = len(labels)

    def draw(pos: np.ndarray, size: int) -> np.ndarray:
        if groups is None:  # each image once per pass, passes cycled
            return np.concatenate([rng.permutation(pos) for _ in range(math.ceil(size / len(pos)))])[:size]
        _, inverse, counts = np.unique(groups[pos], return_inverse=True, return_counts=True)
        w = counts[inverse].astype(float) ** -temper
        return rng.choice(pos, size=size, replace=True, p=w / w.sum())

    def each_class(pos: np.ndarray) -> np.ndarray:
        if groups is None:
            return rng.permutation(pos)
        drawn = [draw(pos[labels[pos] == c], int((labels[pos] == c).sum())) for c in np.unique(labels[pos])]
        return rng.permutation(np.concatenate(drawn))

    if not covid_percent or covid_class is None:
        return np.array_split(each_class(np.arange(n)), max(1, n // batch_size))
    covid = np.flatnonzero(labels == covid_class)
    other = np.flatnonzero(labels != covid_class)
    k = max(1, round(covid_percent * batch_size))
    if len(covid) == 0 or len(other) == 0:
        raise ConfigError(
            "--covid-percent needs COVID-19 and other images in the training split; pass --covid-percent 0"
        )
    other = each_class(other)
    chunks = np.array_split(other, max(1, len(other) // (batch_size - k)))
    cycle = draw(covid, k * len(chunks))
    return [np.concatenate([c, cycle[i * k : (i + 1) * k]]) for i, c in enumerate(chunks)]
