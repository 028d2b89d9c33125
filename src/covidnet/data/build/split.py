"""The patient-level split: the records that must share a split joined (a union-find over the same patient,
the same non-numeric id across sources, a dropped duplicate's patient), then whole groups drawn into train,
val and test stratified by label, or placed where official COVIDx split files (``--split-file``) or a
released COVIDx folder's own split says, with what those lists held and matched for the report.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from ...errors import ConfigError
from ..records import CLASSES, LABELS, NEGATIVE_ONLY, to_binary
from ..sources import COVIDX_SOURCE_ALIASES, official_key
from .config import SPLITS, BuildConfig


class UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def group_patients(records, kept: list[int], links: list[tuple[int, int]], uf: UnionFind) -> None:
    """Join in ``uf`` the records that must share a split: same patient (per source), same non-numeric id
    across sources, and the patient of a dropped duplicate with the copy that is kept."""
    first_of: dict[str, int] = {}
    for i in kept:
        for key in (records[i].uid,) + (
            (f"id:{records[i].patient_id}",) if not records[i].patient_id.isdigit() else ()
        ):
            uf.union(i, first_of.setdefault(key, i))
    for i, j in links:  # one image in two places means one person: keep their other images together
        if records[j].uid in first_of:
            uf.union(i, first_of[records[j].uid])


def assign_splits(cfg, records, kept, uf, drop) -> tuple[dict[int, str], dict]:
    groups: dict[int, list[int]] = defaultdict(list)
    for i in kept:
        groups[uf.find(i)].append(i)
    labels = [r.label for r in records]
    official: dict = {}
    # a released COVIDx folder names its own split (the covidx reader puts it on each record)
    own = {
        i: records[i].extra["official_split"]
        for i in kept
        if cfg.split == "official" and records[i].extra.get("official_split") in SPLITS
    }
    if not cfg.split_files and not own:
        by_group = _stratified_split(groups, labels, cfg)
        return {i: by_group[uf.find(i)] for i in kept}, official

    listed = _read_split_files(cfg.split_files) if cfg.split_files else {}
    named, missing, disagree, loose = _match_split_files(records, kept, listed)
    for i, split in own.items():  # the release's own split, test first as well
        if i not in named or SPLITS.index(split) > SPLITS.index(named[i]):
            named[i] = split
    group_split = _group_splits(named, uf)
    split_of, leaked = _follow_group_splits(cfg, kept, named, group_split, uf, drop)
    # the official lists have no validation split: carve one from train by patient
    val_given = bool(listed.get("val")) or "val" in own.values()
    if cfg.val_fraction and not val_given:
        _carve_val(cfg, groups, group_split, split_of, labels)
    _draw_unlisted(cfg, groups, group_split, split_of, labels)
    official = _official_summary(cfg, records, listed, named, own, missing, disagree, loose, leaked, val_given)
    return split_of, official


def _match_split_files(
    records, kept: list[int], listed: dict[str, list[dict]]
) -> tuple[dict[int, str], list[dict], list[str], int]:
    """The split each listed image is named in, by file-name stem or else by ``official_key``. Returns
    (named, rows that match no image, label disagreements, rows matched only by ``official_key``)."""
    by_stem: dict[str, list[int]] = defaultdict(list)
    by_key: dict[str, list[int]] = defaultdict(list)  # names that differ only as official_key says
    for i in kept:
        by_stem[records[i].stem].append(i)
        by_key[official_key(records[i].stem)].append(i)
    named: dict[int, str] = {}
    missing: list[dict] = []
    disagree: list[str] = []
    loose = 0
    for split in ("test", "val", "train"):  # test first: a conflict never moves an image out of test
        for row in listed.get(split, []):
            hits = by_stem.get(Path(row["filename"]).stem) or by_key.get(official_key(row["filename"]), [])
            loose += bool(hits) and Path(row["filename"]).stem not in by_stem
            src = COVIDX_SOURCE_ALIASES.get(row["source"], row["source"])
            if len(hits) > 1 and src:
                hits = [i for i in hits if records[i].source == src] or hits
            if not hits:
                missing.append(row)
            for i in hits:
                named.setdefault(i, split)
                ours = records[i].label if row["label"] in CLASSES else to_binary(records[i].label)
                if ours != row["label"]:
                    disagree.append(
                        f"{row['file']}:{row['line']}: {row['filename']} is {row['label']} there, {ours} here"
                    )
    return named, missing, disagree, loose


def _group_splits(named: dict[int, str], uf: UnionFind) -> dict[int, str]:
    """A group goes where its listed images say; a group listed in two splits follows test, then val."""
    group_split: dict[int, str] = {}
    for i, split in named.items():
        g = uf.find(i)
        prev = group_split.get(g)
        if prev is None or SPLITS.index(split) > SPLITS.index(prev):
            group_split[g] = split
    return group_split


def _follow_group_splits(
    cfg, kept: list[int], named: dict[int, str], group_split: dict[int, str], uf: UnionFind, drop
) -> tuple[dict[int, str], list[int]]:
    """Each image in its group's split. A listed image whose patient is in another split is dropped (leaked);
    an unlisted one follows its patient's split, or is dropped under --split-file. Returns (split_of, leaked)."""
    split_of = {}
    leaked = []
    for i in kept:
        g = uf.find(i)
        if i in named and named[i] != group_split[g]:
            drop(
                i,
                "patient also in the official test split"
                if group_split[g] == "test"
                else "patient also in another official split",
                f"listed in {named[i]}, but its patient is in {group_split[g]}: kept out so no patient crosses splits",
            )
            leaked.append(i)
        elif i in named or (g in group_split and not cfg.split_files):  # unlisted: follows its patient's split
            split_of[i] = group_split[g]
        elif cfg.split_files:
            drop(i, "not in the official split files", "its image is named in none of --split-file")
    return split_of, leaked


def _carve_val(
    cfg, groups: dict[int, list[int]], group_split: dict[int, str], split_of: dict[int, str], labels
) -> None:
    """Move a val share of the listed groups' train images into val, by patient (in ``split_of``)."""
    train_groups = {g: [i for i in m if split_of.get(i) == "train"] for g, m in groups.items() if g in group_split}
    train_groups = {g: m for g, m in train_groups.items() if m}
    sub = BuildConfig(sources=cfg.sources, out=cfg.out, val_fraction=cfg.val_fraction, test_fraction=0.0, seed=cfg.seed)
    for g, split in _stratified_split(train_groups, labels, sub).items():
        for i in train_groups[g]:
            split_of[i] = split


def _draw_unlisted(
    cfg, groups: dict[int, list[int]], group_split: dict[int, str], split_of: dict[int, str], labels
) -> None:
    """The other sources' patients (no list names them): drawn by patient as without official lists (in
    ``split_of``); under --split-file they were left out instead."""
    free = {g: m for g, m in groups.items() if g not in group_split}
    if free and not cfg.split_files:
        by_group = _stratified_split(free, labels, cfg)
        for g, m in free.items():
            for i in m:
                split_of[i] = by_group[g]


def _stratified_split(groups: dict[int, list[int]], labels: list[str], cfg: BuildConfig) -> dict[int, str]:
    """Assign whole groups to splits so each label's test and val shares come close to the fractions.
    A group's label for stratification is its rarest class (a patient with any COVID-19 image counts
    as COVID-19)."""
    rng = np.random.default_rng(cfg.seed)
    rank = {c: k for k, c in enumerate(reversed(CLASSES))}  # COVID-19 first: the rarest class decides
    rank[NEGATIVE_ONLY] = len(rank)  # a binary release's negative: after every class
    by_label: dict[str, list[int]] = defaultdict(list)
    for g, members in sorted(groups.items()):
        by_label[min((labels[m] for m in members), key=rank.get)].append(g)
    assign = {}
    for _label, gs in sorted(by_label.items()):
        gs = [gs[k] for k in rng.permutation(len(gs))]
        total = sum(len(groups[g]) for g in gs)
        quota = {"test": cfg.test_fraction * total, "val": cfg.val_fraction * total}
        filled = {"test": 0, "val": 0}
        for g in gs:
            split = next((s for s in ("test", "val") if filled[s] + len(groups[g]) / 2 <= quota[s]), "train")
            if split != "train":
                filled[split] += len(groups[g])
            assign[g] = split
    return assign


def _read_split_files(split_files: list[tuple[str, Path]]) -> dict[str, list[dict]]:
    rows: dict[str, list[dict]] = defaultdict(list)
    for split, path in split_files:
        if not path.is_file():
            raise ConfigError(f"{path}: split file not found")
        for n, line in enumerate(path.read_text().splitlines(), start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) > 4 and parts[-2] in (
                *LABELS,
                "positive",
            ):  # COVIDx 7/8: 'COVID 70 COVID(70).png COVID-19 sirm'
                parts = [" ".join(parts[:-3]), *parts[-3:]]
            if len(parts) < 3:
                raise ConfigError(f"{path}:{n}: expected 'patientid filename label [source]', got {line!r}")
            rows[split].append(
                {
                    "patient_id": parts[0],
                    "filename": parts[1],
                    "label": parts[2],
                    "source": parts[3] if len(parts) > 3 else "",
                    "file": str(path),
                    "line": n,
                }
            )
    return rows


def _official_summary(cfg, records, listed, named, own, missing, disagree, loose, leaked, val_given) -> dict:
    """The report's ``official_split`` section: what the official lists held and what was matched."""
    by_source: dict[str, Counter] = defaultdict(Counter)
    for i, split in named.items():
        by_source[records[i].source][split] += 1
    release_files = sorted(
        {records[i].extra["label_file"].rsplit(":", 1)[0] for i in own if records[i].extra.get("label_file")}
    )
    return {
        "files": [[s, str(p)] for s, p in cfg.split_files],
        "release_label_files": release_files,  # a covidx source's own train/val/test.txt
        "rows": {s: len(v) for s, v in listed.items()},
        "matched": {s: sum(1 for i, sp in named.items() if sp == s) for s in SPLITS},
        "matched_by_source": {src: {s: c[s] for s in SPLITS} for src, c in sorted(by_source.items())},
        "matched_by_normalised_name": loose,  # rows matched only by official_key ('COVID(63)' = 'COVID-63')
        "missing_count": len(missing),
        "missing_by_source": dict(Counter(m["source"] or "(none)" for m in missing)),
        "missing": [f"{m['file']}:{m['line']}: {m['filename']}" for m in missing],
        "label_disagreements": disagree,  # the official list's label differs from what the source says
        "leakage": {"patients": len({records[i].uid for i in leaked}), "images_left_out": len(leaked)},
        "val": "from the official lists"
        if val_given
        else ("carved from train by patient" if cfg.val_fraction else "none"),
    }
