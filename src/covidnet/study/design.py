"""What makes one kind of study: its arms, each with the ``TrainConfig`` settings that make it, and the arm
the others are compared with. The plan, the runs, the summary and the page read these from a ``Design``
and name no arm themselves; the shortcut study's is ``variants.SHORTCUTS``.

Another kind of study (say architecture x initialisation x label fraction) is another ``Design``, with its
own arms, returned by the ``design`` of its own config.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Design:
    """One kind of study.

    command: what ``study.json`` records as the command that ran it (``"study shortcuts"``).
    title: the heading of its page and of ``table.md``.
    arms: every arm it can run, by name; an arm has a ``name``, ``about`` (what it changes), ``settings``
        (the ``TrainConfig`` settings that make it) and ``needs_lungs`` (``variants.Variant``).
    reference: the arm every other is compared with (paired differences, findings); it runs first and is
        the first of the summary's arms.
    """

    command: str
    title: str
    arms: dict
    reference: str

    @property
    def sets(self) -> frozenset[str]:
        """Every ``TrainConfig`` field some arm sets: the study's, not a ``--train-option``."""
        return frozenset(k for arm in self.arms.values() for k in arm.settings)

    def order(self, names: list[str]) -> list[str]:
        """``names`` with the reference first, each once: the order the runs run and the tables read."""
        return list(dict.fromkeys([self.reference, *names]))
