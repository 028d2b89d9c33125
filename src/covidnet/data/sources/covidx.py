"""A released COVIDx folder (COVIDx CXR-2, CXR-3, CXR-4, COVIDx 8/9 as built by the reference notebooks):
label files ``train.txt``, ``val.txt`` (CXR-3 onwards) and ``test.txt``, and the images under ``train/``,
``val/`` and ``test/``. A label file that is not named ``SPLIT.txt`` is found as ``SPLIT_*.txt`` (e.g.
``train_COVIDx9A.txt``), when there is exactly one.

Each line is ``patient_id filename class data_source`` (lindawangg/COVID-Net docs/COVIDx.md; the
Kaggle releases write the same four columns). Releases up to COVIDx5 have no source column (three
fields); COVIDx 7 and 8 write some SIRM patients with a space in the id ('COVID 70 COVID(70).png
COVID-19 sirm', five fields): the id is then everything before the file name, and the line is reported.

Labels. A three-class release (COVIDx 8A/9A, CXR-3A) writes ``normal`` / ``pneumonia`` / ``COVID-19``; a
binary one (CXR-2, CXR-3B, CXR-4, COVIDx 8B/9B) writes ``positive`` / ``negative``. ``positive`` becomes
the record label ``COVID-19`` (in COVIDx every COVID-19 image is positive and every positive one COVID-19);
``negative`` stays ``negative`` (``records.NEGATIVE_ONLY``): the release does not say whether the image is
normal or pneumonia, so such records are for binary training only (``covidnet train --binary``, which
reads the index's ``label_binary``); three-class training on them stops with a message saying so. What
the file wrote is kept in ``extra['covidx_label']``.

The official split is the release's: each record carries ``extra['official_split']``, and the build keeps
it unless ``--split patient`` (then it draws a patient-level split as for any source). Records come test
first, then val, then train, so that where the release holds one image twice the build's duplicate
removal keeps the test copy. ``Record.source`` is ``NAME/data_source`` (e.g. ``covidx/rsna``): the
release's origins stay apart in counts and audits, and patient ids are qualified by origin.

Known defects of the released files are handled and reported, never silently fixed:

* ``positive`` in a three-class file: kept as COVID-19 (the same statement), listed under anomalies;
  ``negative`` there says neither normal nor pneumonia and is left out ("negative label in a
  three-class file").
* a listed name that differs from the file on disk only by extension or by ``(n)`` versus ``-n``: the
  file is used, and the pair is listed under anomalies.
* the same line twice: read once, the repeat left out ("duplicate line"); one image under two patient
  ids: the first line kept ("image listed twice"); one image with two labels: left out ("conflicting
  labels for one image"); one image in two label files: kept in the later split, test > val > train
  ("image in two official splits").
* a patient in two official splits: listed under anomalies with the count (leakage in the release); the
  build then keeps the patient in one split (test first) and names every image it leaves out.
* a listed image absent from its folder: left out, per file ("image missing"; fatal with ``--strict``);
  an image on disk that no label file lists: left out ("image not in the label files").

Sites: a line names its image's origin (the source column), not its hospital. An origin that is one hospital
gives it (``ORIGIN_SITES``: rsna is NIH ChestX-ray14's, so the NIH Clinical Center; actmed, Actualmed; stonybrook,
Stony Brook University Hospital); ricord gives the site code its patient ids carry (``ricord.site_of``); the
collections of many hospitals (cohen, fig1, sirm, bimcv), an origin not listed and a line without a source column
leave the site unknown: the line holds nothing finer (cohen's ``location`` is not in it).

Bad input stops the build with one line naming the file: a folder without label files, a line with
fewer than three fields, a class that is none of the five above.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

from ...errors import SourceError
from ..records import NEGATIVE_ONLY, Record
from . import agchung, nih, ricord, stonybrook
from ._common import ImageIndex, SourceData, require_dir

NAME = "covidx"
SPLITS = ("train", "val", "test")
THREE_CLASS = {"normal": "normal", "pneumonia": "pneumonia", "covid-19": "COVID-19"}
BINARY = {"positive": "COVID-19", "negative": NEGATIVE_ONLY}
KNOWN = {**THREE_CLASS, **BINARY}
# the site of an origin that is one hospital, by the name COVIDx's source column writes ('rnsa': 199 RSNA lines of
# train_COVIDx9A.txt); ricord's site comes from the patient id, the other origins' is unknown
ORIGIN_SITES = {"rsna": nih.SITE, "rnsa": nih.SITE, "actmed": agchung.ACTUALMED_SITE, "stonybrook": stonybrook.SITE}


def origin_site(origin: str, patient_id: str) -> str:
    """The site of a line's image from its source column and patient id ('' where the line holds none)."""
    origin = origin.strip().lower()
    return ricord.site_of(patient_id) if origin == "ricord" else ORIGIN_SITES.get(origin, "")


def label_files(root: Path) -> dict[str, Path]:
    """The release's label file of each split it has."""
    found = {}
    for split in SPLITS:
        exact = root / f"{split}.txt"
        if exact.is_file():
            found[split] = exact
            continue
        others = sorted(p for p in root.glob(f"{split}_*.txt") if p.is_file())
        if len(others) > 1:
            raise SourceError(
                f"{root}: several label files for {split} ({', '.join(p.name for p in others)}); "
                f"keep one, or name it {split}.txt"
            )
        if others:
            found[split] = others[0]
    return found


def _parse(path: Path, source: str) -> list[dict]:
    """The lines of one label file, as dicts; a malformed line stops the build."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise SourceError(f"{path}: not a text file ({e})") from None
    rows = []
    for n, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{path}:{n}"
        if len(fields) < 3:
            raise SourceError(
                f"{where}: too few fields ({len(fields)}); expected 'patient_id filename class "
                f"data_source', got {line.strip()!r}"
            )
        spaced = False
        if len(fields) <= 4:
            pid, name, label = fields[:3]
            origin = fields[3] if len(fields) == 4 else ""
        elif fields[-2].lower() in KNOWN:  # 'COVID 70 COVID(70).png COVID-19 sirm': a space in the id
            pid, name, label, origin, spaced = " ".join(fields[:-3]), fields[-3], fields[-2], fields[-1], True
        else:
            raise SourceError(
                f"{where}: {len(fields)} fields and no class among the last two; expected "
                f"'patient_id filename class data_source', got {line.strip()!r}"
            )
        if label.lower() not in KNOWN:
            raise SourceError(
                f"{where}: unknown class {label!r} for {name}; expected normal, pneumonia, COVID-19 "
                "(three-class releases) or positive, negative (binary ones)"
            )
        rows.append(
            {
                "patient_id": pid,
                "filename": name,
                "label": label,
                "origin": origin,
                "where": where,
                "file": path,
                "spaced": spaced,
            }
        )
    return rows


def read(root: Path, source: str = NAME) -> SourceData:
    root = require_dir(root, source)
    files = label_files(root)
    if not files:
        raise SourceError(
            f"{root}: no COVIDx label files (train.txt, val.txt, test.txt, or train_*.txt ...) for "
            f"source {source!r}; is this a released COVIDx folder?"
        )
    out = SourceData()
    lines = {split: _parse(path, source) for split, path in files.items()}
    names_listed = {split: {r["filename"] for r in rows} for split, rows in lines.items()}
    counts = Counter()  # anomalies by reason, in the order first met, for the notes
    lines = _check_labels(lines, root, source, out, counts)
    chosen = _one_line_per_image(lines, root, source, out)
    indexes = {s: ImageIndex(root / s) for s in files}
    listed_paths = _match_images(chosen, files, indexes, root, source, out, counts)
    _exclude_unlisted(indexes, names_listed, listed_paths, files, source, out)
    _report_leakage(source, out)
    _summary_notes(source, out, counts)
    return out


def _origin(source: str, row: dict) -> str:
    """A line's ``Record.source``: ``NAME/data_source``, or ``NAME`` where the line has no source column."""
    return f"{source}/{row['origin']}" if row["origin"] else source


def _item(root: Path, split: str, row: dict) -> str:
    """Where a line says its image is: the split's folder and the listed name."""
    return str(root / split / row["filename"])


def _said(row: dict) -> str:
    """What a line says, for the report: file and line, patient, label."""
    return f"listed at {row['where']} as patient {row['patient_id']!r}, {row['label']}"


def _check_labels(lines: dict[str, list[dict]], root: Path, source: str, out: SourceData, counts: Counter) -> dict:
    """Stage 1, labels: what each file is (three-class or binary), and the lines that contradict it. Sets each
    line's ``record_label``; returns the lines kept, per split."""
    checked = {}
    for split, rows in lines.items():
        three = any(r["label"].lower() in THREE_CLASS for r in rows)
        kept = []
        for r in rows:
            r["record_label"] = KNOWN[r["label"].lower()]
            if three and r["label"].lower() == "negative":
                out.exclude(
                    _origin(source, r),
                    _item(root, split, r),
                    "negative label in a three-class file",
                    f"{_said(r)}: 'negative' says neither normal nor pneumonia",
                )
                continue
            if three and r["label"].lower() == "positive":
                out.anomaly(
                    _origin(source, r),
                    _item(root, split, r),
                    "binary label in a three-class file",
                    f"{_said(r)}; read as COVID-19",
                )
                counts["binary label in a three-class file"] += 1
            if r["spaced"]:
                out.anomaly(
                    _origin(source, r),
                    _item(root, split, r),
                    "patient id with a space",
                    f"{_said(r)}; the id is everything before the file name",
                )
                counts["patient id with a space"] += 1
            kept.append(r)
        checked[split] = kept
    return checked


def _one_line_per_image(
    lines: dict[str, list[dict]], root: Path, source: str, out: SourceData
) -> dict[str, list[tuple[str, dict]]]:
    """Stage 2, one line per image: repeats, two patients or two labels for one image, one image in two splits.
    Returns the line chosen for each image, under the split it stays in (test > val > train)."""
    by_name: dict[str, list[tuple[str, dict]]] = defaultdict(list)
    for split in ("test", "val", "train"):
        for r in lines.get(split, []):
            by_name[r["filename"]].append((split, r))
    chosen: dict[str, list[tuple[str, dict]]] = {s: [] for s in SPLITS}
    for entries in by_name.values():
        if len({r["record_label"] for _, r in entries}) > 1:
            for split, r in entries:
                out.exclude(
                    _origin(source, r),
                    _item(root, split, r),
                    "conflicting labels for one image",
                    f"{_said(r)}; also " + "; ".join(f"{x['label']} at {x['where']}" for _, x in entries if x is not r),
                )
            continue
        first_split, first = entries[0]  # test first: an image in two splits stays in the later one
        chosen[first_split].append((first_split, first))
        for split, r in entries[1:]:
            if split != first_split:
                reason, why = "image in two official splits", f"kept in {first_split} ({first['where']})"
            elif (r["patient_id"], r["label"]) == (first["patient_id"], first["label"]):
                reason, why = "duplicate line", f"repeats {first['where']}"
            else:
                reason, why = "image listed twice", f"kept as patient {first['patient_id']!r} ({first['where']})"
            out.exclude(_origin(source, r), _item(root, split, r), reason, f"{_said(r)}; {why}")
    return chosen


def _match_images(
    chosen: dict[str, list[tuple[str, dict]]],
    files: dict[str, Path],
    indexes: dict[str, ImageIndex],
    root: Path,
    source: str,
    out: SourceData,
    counts: Counter,
) -> set[Path]:
    """Stage 3, the images: each chosen line's file in its split's folder, by name, else by stem or
    official_key (the extension and '(n)' versus '-n' anomalies, reported); a record for each file found.
    Returns the files the lines resolved to."""
    listed_paths: set[Path] = set()
    for split in ("test", "val", "train"):
        if split not in files:
            continue
        folder = root / split
        if not folder.is_dir():
            out.notes.append(
                f"{source}: {files[split].name} lists {len(chosen[split])} images but {folder} does not exist"
            )
        for _, r in sorted(chosen[split], key=lambda e: (e[1]["file"].name, int(e[1]["where"].rsplit(":", 1)[1]))):
            path, how = indexes[split].find_loose(r["filename"])
            if path is None:
                out.exclude(
                    _origin(source, r),
                    _item(root, split, r),
                    "image missing",
                    f"{_said(r)}; no file of that name, stem or numbering in {folder}",
                )
                continue
            if path in listed_paths:  # two listed names resolved to one file
                out.exclude(
                    _origin(source, r),
                    str(path),
                    "image listed twice",
                    f"{_said(r)}; {path.name} is listed under another name too",
                )
                continue
            listed_paths.add(path)
            if how != "name":
                what = "extension" if how == "stem" else "numbering ('(n)' versus '-n')"
                out.anomaly(
                    _origin(source, r),
                    str(path),
                    "file name differs from the label file",
                    f"{_said(r)} as {r['filename']!r}; on disk {path.name!r} (differs by {what}); used",
                )
                counts["file name differs from the label file"] += 1
            out.records.append(_record(split, r, path, source))
    return listed_paths


def _record(split: str, row: dict, path: Path, source: str) -> Record:
    """The record of a line whose image was found at ``path``."""
    return Record(
        patient_id=row["patient_id"],
        path=path,
        label=row["record_label"],
        source=_origin(source, row),
        site=origin_site(row["origin"], row["patient_id"]),
        extra={
            "official_split": split,
            "covidx_label": row["label"],
            "data_source": row["origin"],
            "label_file": row["where"],
        },
    )


def _exclude_unlisted(
    indexes: dict[str, ImageIndex],
    names_listed: dict[str, set[str]],
    listed_paths: set[Path],
    files: dict[str, Path],
    source: str,
    out: SourceData,
) -> None:
    """The images on disk that no line of their split's label file names: left out."""
    for split, index in indexes.items():
        named = {index.find_loose(n)[0] for n in names_listed[split]}  # lines left out above still name their file
        for path in sorted(set(index.by_name.values()) - listed_paths - named):
            out.exclude(
                source, str(path), "image not in the label files", f"in {split}/ but in no line of {files[split].name}"
            )


def _report_leakage(source: str, out: SourceData) -> None:
    """Stage 4, leakage in the release: a patient whose images the label files put in two splits (an anomaly
    each, and a note)."""
    splits_of: dict[tuple[str, str], Counter] = defaultdict(Counter)
    for r in out.records:
        splits_of[(r.source, r.patient_id)][r.extra["official_split"]] += 1
    leaking = {k: c for k, c in splits_of.items() if len(c) > 1}
    for (src_name, pid), c in sorted(leaking.items()):
        where = ", ".join(f"{n} in {s}" for s, n in sorted(c.items(), key=lambda kv: SPLITS.index(kv[0])))
        out.anomaly(
            src_name,
            f"patient {pid}",
            "patient in two official splits",
            f"patient {pid!r} has images {where} (leakage in the release); the build keeps the patient in "
            "one split, test first, and lists the images it leaves out",
        )
    if leaking:
        out.notes.append(
            f"{source}: {len(leaking)} patient(s) in two official splits (leakage in the release); "
            "each is kept in one split, test first"
        )


def _summary_notes(source: str, out: SourceData, counts: Counter) -> None:
    """The notes that count the anomalies handled, and the images labelled only negative."""
    for reason, n in counts.items():
        out.notes.append(
            f"{source}: {n} line(s) with '{reason}' handled; each is listed under anomalies in report.json"
        )
    n_negative = sum(r.label == NEGATIVE_ONLY for r in out.records)
    if n_negative:
        out.notes.append(
            f"{source}: {n_negative} image(s) labelled only negative (binary release): for --binary training"
        )
