"""Configuration fields that carry their own command-line help.

A command's configuration is a dataclass (``TrainConfig``, ``BuildConfig``, …), written next to every
output so the result can be reproduced. Declaring a field with ``option`` makes it a flag of the command
as well: ``covidnet.cli.flags`` adds one flag per such field (its type from the annotation, its help and
default from here), so the flags map one-to-one onto the fields and their help cannot drift from them.
A field declared the plain way is not a flag.

Neither argparse nor torch is imported here, so every API module can declare its configuration with it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from .errors import ConfigError


def option(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    default_factory: Callable[[], Any] = dataclasses.MISSING,
    choices: Sequence | None = None,
    metavar: str | None = None,
    flag: str | None = None,
    negate: bool = False,
    may_change_on_resume: bool = False,
    positional: bool = False,
) -> Any:
    """A ``dataclasses.field`` that is also a command-line flag; its metadata holds the rest.

    default, default_factory: as for ``dataclasses.field``; with neither, the flag is required.
    help: what the flag does. The CLI adds " (default X)" unless the text speaks of its default itself,
        or the default is None, or the field is a bool or a list.
    choices: the only values the flag accepts. metavar: the value's name in the usage line.
    flag: the flag, where it is not "--" and the field name with "-" for "_" (``--source`` for ``sources``).
    negate: a bool field that the flag turns off (``--quiet`` for ``progress``), instead of ``--x/--no-x``.
    positional: an argument, not a flag (``predict IMAGE_OR_DIR...``; a list field takes one or more, or any
        number when it has a default).
    may_change_on_resume: ``--resume`` may give this field another value than the run it continues had
        (``check_resumed``): where it writes, how it reports, how long it goes on; never what a result depends on.
    """
    metadata = {
        "help": help,
        "choices": choices,
        "metavar": metavar,
        "flag": flag,
        "negate": negate,
        "may_change_on_resume": may_change_on_resume,
        "positional": positional,
    }
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata)


def check_resumed(cfg, saved: dict, where: str, what: str = "run") -> None:
    """``cfg``, a command's config given with ``--resume``, against ``saved``, the config the run (or study)
    in ``where`` was started with: every field must be the same but those declared
    ``may_change_on_resume``. A field newer than the saved run had its default then. One line naming the
    first difference otherwise. The one resume rule of every command that resumes."""
    for f in dataclasses.fields(cfg):
        if f.metadata.get("may_change_on_resume"):
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        was, now = saved.get(f.name, default), getattr(cfg, f.name)
        if isinstance(now, tuple):
            now = list(now)
        if was != now:
            raise ConfigError(
                f"{where}: --{f.name.replace('_', '-')} was {was!r} in this {what}, not {now!r}; "
                f"resume with the {what}'s own settings"
            )
