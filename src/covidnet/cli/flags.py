"""A config dataclass's ``option`` fields (``covidnet.config``) as argparse flags, and the config back
from the parsed flags: one flag per field, named, typed, documented and defaulted by the field."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import types
import typing
from collections.abc import Collection
from pathlib import Path


def config_class(p: argparse.ArgumentParser, module: str, name: str):
    """``covidnet.<module>.<name>``; None where that module needs an optional dependency that is not
    installed: then ``main`` lets the command take any arguments, and running it raises the
    ModuleNotFoundError, which ``main`` turns into one line naming the extra to install."""
    try:
        return getattr(importlib.import_module(f".{module}", "covidnet"), name)
    except ModuleNotFoundError as e:
        p.set_defaults(func=lambda args, e=e: _raise(e), any_arguments=True)
        return None


def _raise(e: BaseException):
    raise e


def add_config_flags(
    p: argparse.ArgumentParser,
    cls,
    *,
    defaults: dict | None = None,
    one_of: tuple[str, ...] = (),
    only: Collection[str] | None = None,
) -> None:
    """One flag per ``option`` field of the dataclass ``cls``, in field order, its value stored under the
    field's name.

    defaults: the command's own default for a field, where it is not the dataclass's (``data synth --n``).
    one_of: fields whose flags form a required group of mutually exclusive flags (``serve --checkpoint``
    or ``--onnx``).
    only: the fields that get a flag, where not every one does (``lungs train``: the segmentation task's).
    """
    hints = typing.get_type_hints(cls)
    group = p.add_mutually_exclusive_group(required=True) if one_of else None
    for f in dataclasses.fields(cls):
        if "help" not in f.metadata or (only is not None and f.name not in only):
            continue
        default = (defaults or {}).get(f.name, _default(f))
        if f.metadata.get("positional"):
            p.add_argument(f.name, **_positional_kwargs(f, hints[f.name], default))
            continue
        flag = f.metadata["flag"] or "--" + f.name.replace("_", "-")
        (group if f.name in one_of else p).add_argument(flag, dest=f.name, **_flag_kwargs(f, hints[f.name], default))


def config_from_args(cls, args: argparse.Namespace, **values):
    """``cls`` with every ``option`` field from its flag, ``values`` for the others given here (or for a
    flag's value converted), and the defaults for the rest (and for a field the command has no flag for)."""
    flags = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if "help" in f.metadata and f.name in args}
    return cls(**{**flags, **values})


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _flag_kwargs(f: dataclasses.Field, hint, default) -> dict:
    """add_argument's keywords for field ``f`` with annotation ``hint``: int, float, str and Path take a
    value (``Path | None``: an empty one is None), bool is ``--x/--no-x``, a list repeats the flag (its
    values kept as given: the command converts them)."""
    m, text = f.metadata, f.metadata["help"]
    if m["negate"]:
        return dict(action="store_false", default=default, help=text.replace("%", "%%"))
    kind, repeated = _kind(hint)
    kw: dict = dict(metavar=m["metavar"], choices=m["choices"])
    if default is dataclasses.MISSING:
        kw["required"] = True
    else:
        kw["default"] = default
    if kind is bool and not repeated:
        kw["action"] = argparse.BooleanOptionalAction
    else:
        if repeated:
            kw["action"] = "append"
        elif kind in (int, float):
            kw["type"] = kind
        elif kind is Path:
            kw["type"] = _path_or_none if _optional(hint) else Path
        if default is not dataclasses.MISSING and default is not None and not repeated and "default" not in text:
            text = f"{text} (default {default})"
    kw["help"] = text.replace("%", "%%")
    return kw


def _positional_kwargs(f: dataclasses.Field, hint, default) -> dict:
    """add_argument's keywords for a positional field: a list takes one or more values (any number with a
    default), anything else one value (or none, with a default)."""
    kind, repeated = _kind(hint)
    required = default is dataclasses.MISSING
    kw: dict = dict(metavar=f.metadata["metavar"], help=f.metadata["help"].replace("%", "%%"))
    if repeated:
        kw["nargs"] = "+" if required else "*"
    elif not required:
        kw["nargs"] = "?"
    if not required:
        kw["default"] = default
    if kind in (int, float) and not repeated:
        kw["type"] = kind
    return kw


def _optional(hint) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in typing.get_args(hint)


def _kind(hint) -> tuple[type, bool]:
    """(the type of one value, whether there are several) of an annotation, ``X | None`` read as X."""
    if _optional(hint):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if typing.get_origin(hint) is list:
        return typing.get_args(hint)[0], True
    return hint, False


def _path_or_none(text: str) -> Path | None:
    return Path(text) if text else None
