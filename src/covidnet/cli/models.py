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
    from ..models import KINDS, get_spec, list_models

    rows = []
    for kind in KINDS:  # classifiers, then segmenters (``covidnet lungs train``)
        for name in list_models(kind):
            s = get_spec(name)
            pub = f"{s.published.params_m} M / {s.published.macs_g} G @ {s.published.size}" if s.published else ""
            rows.append([name, kind, str(s.input_size), pub, s.description])
    if args.json:
        keys = ("arch", "kind", "input_size", "description")
        print(json.dumps([dict(zip(keys, (r[0], r[1], int(r[2]), r[4]))) for r in rows], indent=2))
    else:
        print(table(["arch", "kind", "input", "published", "description"], rows))
    return 0
