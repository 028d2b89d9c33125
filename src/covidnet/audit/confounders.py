"""Test 7, population confounders: label x age group and label x view cross-tabulations, and the groups
that one label holds alone or far more often than another."""

from __future__ import annotations

from collections import Counter, defaultdict

from ..data.records import PAEDIATRIC_AGE


def population(index: list[dict]) -> dict:
    def age_group(r):
        try:
            return "paediatric" if float(r["age"]) < PAEDIATRIC_AGE else "adult"
        except (TypeError, ValueError):
            return "unknown"

    labels = sorted({r["label"] for r in index})
    tables, flags = {}, []
    for name, key in (("age_group", age_group), ("view", lambda r: r.get("view") or "unknown")):
        table = defaultdict(Counter)
        for r in index:
            table[r["label"]][key(r)] += 1
        tables[name] = {lab: dict(c) for lab, c in table.items()}
        values = sorted({v for c in table.values() for v in c})
        for v in values:
            if v == "unknown":
                continue
            present = [lab for lab in labels if table[lab][v]]
            share = {lab: table[lab][v] / max(1, sum(table[lab].values())) for lab in labels}
            if len(present) == 1 and len(labels) > 1 and sum(table[lab][v] for lab in labels) >= 5:
                flags.append(f"every {name.replace('_', ' ')} '{v}' image is {present[0]}")
            if max(share.values()) - min(share.values()) >= 0.5:
                flags.append(
                    f"{name.replace('_', ' ')} '{v}' is {max(share, key=share.get)} {max(share.values()):.0%} "
                    f"vs {min(share, key=share.get)} {min(share.values()):.0%}"
                )
    verdict = "fail" if any("every" in f for f in flags) else "warning" if flags else "ok"
    return {
        "test": "population confounders",
        "verdict": verdict,
        "tables": tables,
        "flags": flags,
        "thresholds": {
            "fail": "a group (e.g. paediatric, AP supine) present in one label only",
            "warning": "a group's share differs by >= 50 points between labels",
        },
        "reading": ("; ".join(flags) if flags else "No age group or view is tied to a label."),
    }
