"""Our cohen and NIH readers checked, image by image, against torchxrayvision's ``COVID19_Dataset`` and
``NIH_Dataset`` (code no one here wrote) on the real folders in ../shared/data.

Every difference is a (file, category) row of fixtures/readers_vs_torchxrayvision.csv, and each category is
explained in docs/readers-vs-torchxrayvision.md; the test fails when either reader changes what it gives.
Labels are compared from torchxrayvision's ``.csv`` and ``.labels`` (it reads pixels only in
``__getitem__``), so no image is decoded. After a deliberate change, rewrite the fixture with
``PYTHONPATH=src python tests/data/test_readers_vs_torchxrayvision.py`` and update the docs' table.
"""

from __future__ import annotations

import csv
import sys
from collections import Counter
from pathlib import Path

import pytest

from covidnet.data.sources import read_source

FIXTURE = Path(__file__).parent / "fixtures" / "readers_vs_torchxrayvision.csv"
SHARED_SOURCES = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "sources"
# what each of our exclusion reasons is called when torchxrayvision keeps the row
OURS_EXCLUDES = {
    "lateral view": "ours-excludes-lateral-view",
    "view not frontal or unknown": "ours-excludes-unknown-view",
    "finding not in COVIDx classes": "ours-excludes-finding-outside-classes",
    "image missing": "ours-excludes-missing-image",
}


def txv_class(positives: set[str]) -> str | None:
    """A COVIDx class read off torchxrayvision's label columns (the ones that are 1): what a user of its
    labels would do; None when the positive columns name none of the three classes."""
    if "COVID-19" in positives:
        return "COVID-19"
    if positives == {"No Finding"} or not positives:  # NIH has no 'No Finding' column: all zeros is normal
        return "normal"
    if "Pneumonia" in positives:
        return "pneumonia"
    return None


def _ours_by_row(data, rows: list[dict], name_column: str) -> list[tuple]:
    """One outcome per metadata row: ("kept", label, patient) or ("excluded", reason). The readers emit one
    record or one exclusion per row, in row order; exclusions name their row ``file:line``, in the item or, where
    the item is the row's image, at the head of the detail."""
    at = lambda e: e.item if e.item.rsplit(":", 1)[-1].isdigit() else e.detail.split(": ", 1)[0]  # noqa: E731
    excluded = {int(at(e).rsplit(":", 1)[1]): e.reason for e in data.exclusions}
    records = iter(data.records)
    out = []
    for line, row in enumerate(rows, start=2):
        if line in excluded:
            out.append(("excluded", excluded[line]))
            continue
        r = next(records)
        assert r.stem == Path(row[name_column]).stem, (line, r.path)  # the reader kept its row order
        out.append(("kept", r.label, r.patient_id))
    assert next(records, None) is None
    return out


def _theirs_by_row(ds, n_rows: int, findings: str, sep: str) -> list[tuple | None]:
    """One outcome per metadata row: ("kept", positive columns, patient, the names its finding column
    writes), or None where it dropped the row. ``ds.csv['index']`` is the row's position in the metadata
    file (their ``reset_index``)."""
    out: list[tuple | None] = [None] * n_rows
    for k, original in enumerate(ds.csv["index"]):
        positives = {p for p, v in zip(ds.pathologies, ds.labels[k]) if v == 1}
        written = set(str(ds.csv[findings].iloc[k]).split(sep))
        out[int(original)] = ("kept", positives, str(ds.csv["patientid"].iloc[k]), written)
    return out


def category(ours: tuple, theirs: tuple | None) -> str | None:
    """The difference between our outcome and theirs for one row; None when they agree."""
    if ours[0] == "excluded":
        return None if theirs is None else OURS_EXCLUDES.get(ours[1], "ours-excludes-other")
    if theirs is None:
        return "theirs-drops"
    _, label, patient = ours
    _, positives, their_patient, written = theirs
    if patient != their_patient:
        return "patient-id"
    cls = txv_class(positives)
    if cls != label:
        return "flat-pathogen-pneumonia-column-0" if cls is None and label == "pneumonia" else f"label-{label}-vs-{cls}"
    # the class agrees; columns the finding does not name are positive only by their substring matching
    return "same-class-substring-extra-columns" if positives - written else None


def _read_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        return list(csv.DictReader(f))


def compare_cohen(root: Path, views=("*",)):
    import torchxrayvision as xrv

    rows = _read_rows(root / "metadata.csv")
    ds = xrv.datasets.COVID19_Dataset(
        imgpath=str(root / "images"), csvpath=str(root / "metadata.csv"), views=list(views)
    )
    assert [str(f) for f in ds.csv["filename"]] == [rows[int(i)]["filename"] for i in ds.csv["index"]]
    ours = _ours_by_row(read_source("cohen", root), rows, "filename")
    theirs = _theirs_by_row(ds, len(rows), "finding", "/")
    return rows, ours, theirs


def compare_nih(root: Path):
    import torchxrayvision as xrv

    rows = _read_rows(root / "Data_Entry_2017.csv")
    ds = xrv.datasets.NIH_Dataset(
        imgpath=str(root / "images"), csvpath=str(root / "Data_Entry_2017.csv"), views=["*"], unique_patients=False
    )
    ours = _ours_by_row(read_source("nih", root), rows, "Image Index")
    theirs = _theirs_by_row(ds, len(rows), "Finding Labels", "|")
    return rows, ours, theirs


def differences(sources: Path) -> list[tuple[str, str, str]]:
    """(source, file name, category) of every row where the readers differ, in metadata order."""
    out = []
    for source, compare, column in (("cohen", compare_cohen, "filename"), ("nih", compare_nih, "Image Index")):
        rows, ours, theirs = compare(sources / source)
        for row, o, t in zip(rows, ours, theirs):
            c = category(o, t)
            if c:
                out.append((source, row[column], c))
    return out


def read_fixture() -> list[tuple[str, str, str]]:
    with open(FIXTURE, newline="") as f:
        return [(r["source"], r["file"], r["category"]) for r in csv.DictReader(f)]


# --- the rules of comparison, on rows written here --------------------------------------------------------


@pytest.mark.parametrize(
    "positives, cls",
    [
        ({"COVID-19", "COVID-19, ARDS", "ARDS"}, "COVID-19"),
        ({"No Finding"}, "normal"),
        (set(), "normal"),
        ({"Pneumonia", "Bacterial", "Mycoplasma Bacterial Pneumonia"}, "pneumonia"),
        ({"SARS"}, None),
        ({"Lipoid"}, None),
    ],
)
def test_txv_labels_read_as_covidx_classes(positives, cls):
    assert txv_class(positives) == cls


@pytest.mark.parametrize(
    "ours, theirs, expected",
    [
        (("kept", "COVID-19", "7"), ("kept", {"COVID-19"}, "7", {"COVID-19"}), None),
        (("kept", "pneumonia", "7"), ("kept", {"Pneumonia", "Infiltration"}, "7", {"Pneumonia", "Infiltration"}), None),
        (("excluded", "unlabelled"), None, None),  # 'todo': both leave it out
        (("excluded", "lateral view"), ("kept", {"COVID-19"}, "7", {"COVID-19"}), "ours-excludes-lateral-view"),
        (("kept", "pneumonia", "7"), ("kept", {"SARS"}, "7", {"SARS"}), "flat-pathogen-pneumonia-column-0"),
        (
            ("kept", "COVID-19", "7"),
            ("kept", {"COVID-19", "ARDS", "COVID-19, ARDS"}, "7", {"COVID-19, ARDS"}),
            "same-class-substring-extra-columns",
        ),
        (("kept", "COVID-19", "7"), ("kept", {"COVID-19"}, "8", {"COVID-19"}), "patient-id"),
        (("kept", "normal", "7"), None, "theirs-drops"),
    ],
)
def test_each_kind_of_difference_gets_its_category(ours, theirs, expected):
    assert category(ours, theirs) == expected


def test_fixture_holds_only_file_names_and_categories():
    rows = read_fixture()
    assert rows and all(s in ("cohen", "nih") and Path(f).name == f and c for s, f, c in rows)
    with open(FIXTURE, newline="") as fh:
        assert next(csv.reader(fh)) == ["source", "file", "category"]


def test_docs_table_gives_the_fixtures_counts():
    counts = Counter((s, c) for s, _, c in read_fixture())
    assert counts == {
        ("cohen", "ours-excludes-lateral-view"): 44,
        ("cohen", "ours-excludes-finding-outside-classes"): 7,
        ("cohen", "flat-pathogen-pneumonia-column-0"): 61,
        ("cohen", "same-class-substring-extra-columns"): 16,
    }
    doc = (Path(__file__).resolve().parents[2] / "docs" / "readers-vs-torchxrayvision.md").read_text()
    for (_, cat), n in counts.items():
        assert f"| `{cat}` | {n} |" in doc, cat


# --- the real folders ----------------------------------------------------------------------------------------


@pytest.mark.realdata
def test_every_difference_from_torchxrayvision_is_the_documented_one(shared_data):
    pytest.importorskip("torchxrayvision")
    found = differences(shared_data / "sources")
    assert Counter(found) == Counter(read_fixture())


@pytest.mark.realdata
def test_rows_both_keep_have_one_patient_and_rows_both_drop_are_todo(shared_data):
    """cohen: every row kept by both has the same patient id (class differences are in the fixture), and
    every row both leave out is 'todo'; NIH: all 706 images agree on patient and class."""
    pytest.importorskip("torchxrayvision")
    rows, ours, theirs = compare_cohen(shared_data / "sources" / "cohen")
    both = [(o, t) for o, t in zip(ours, theirs) if o[0] == "kept" and t is not None]
    assert len(both) == 524 and all(o[2] == t[2] for o, t in both)
    neither = [r for r, o, t in zip(rows, ours, theirs) if o[0] == "excluded" and t is None]
    assert len(neither) == 78 and {r["finding"] for r in neither} == {"todo"}
    rows, ours, theirs = compare_nih(shared_data / "sources" / "nih")
    assert len(rows) == 706 and all(o[0] == "kept" and category(o, t) is None for o, t in zip(ours, theirs))


@pytest.mark.realdata
def test_torchxrayvision_defaults_keep_fewer_rows(shared_data):
    """Their defaults: cohen views=['PA', 'AP'] (no 'AP Supine'); NIH views=['PA'] and one image per patient."""
    pytest.importorskip("torchxrayvision")
    rows, ours, theirs = compare_cohen(shared_data / "sources" / "cohen", views=("PA", "AP"))
    dropped = [r["view"] for r, o, t in zip(rows, ours, theirs) if o[0] == "kept" and t is None]
    assert Counter(dropped) == {"AP Supine": 132}
    import torchxrayvision as xrv

    nih = shared_data / "sources" / "nih"
    ds = xrv.datasets.NIH_Dataset(imgpath=str(nih / "images"), csvpath=str(nih / "Data_Entry_2017.csv"))
    ours = read_source("nih", nih).records
    assert len(ds) == 281 == len({r.patient_id for r in ours if r.view == "PA"})
    assert len(ours) == 706 and len({r.patient_id for r in ours}) == 479


if __name__ == "__main__":  # rewrite the fixture from the readers as they are now
    found = differences(Path(sys.argv[1]) if len(sys.argv) > 1 else SHARED_SOURCES)
    with open(FIXTURE, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["source", "file", "category"])
        w.writerows(found)
    print(f"{FIXTURE}: {len(found)} rows; {dict(Counter(c for _, _, c in found))}")
