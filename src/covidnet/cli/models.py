"""``covidnet models``: the registered architectures."""

from __future__ import annotations

import json

from .common import table


def register(sub, flags: bool = True) -> None:
    p = sub.add_parser("models", help="list the registered architectures")
    p.set_defaults(func=run)
    if not flags:
        return
    p.add_argument("--json", action="store_true", help="print JSON")


def run(args) -> int:
    from ..models import get_spec, list_models

    rows = []
    for name in list_models():
        s = get_spec(name)
        pub = f"{s.published.params_m} M / {s.published.macs_g} G @ {s.published.size}" if s.published else ""
        rows.append([name, str(s.input_size), pub, s.description])
    if args.json:
        print(json.dumps([{"arch": r[0], "input_size": int(r[1]), "description": r[3]} for r in rows], indent=2))
    else:
        print(table(["arch", "input", "published", "description"], rows))
    return 0
