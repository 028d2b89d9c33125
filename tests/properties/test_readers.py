"""Every reader of ``covidnet.data.sources`` and the label-file parser (``covidnet.data.labelfile``) fed
mutated metadata (CSV and TSV tables, COVIDx label files, JSON sidecars, an .xlsx sheet, DICOM headers)
in a temporary source tree: a ``CovidnetError`` naming a file of the tree, or records that are right
(a COVIDx label, an image file that exists under the tree, a patient id and an age that are what they
say); never another exception, a hang, or traced memory past a bound."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mutate import apply, apply_text, bounded, ops_strategy, text_ops
from source_trees import WRITERS, rewrite_member

from covidnet.data.labelfile import read_label_file
from covidnet.data.records import LABELS
from covidnet.data.sources import READERS, read_source
from covidnet.errors import CovidnetError

MAX_RESIDENT = 64 << 20  # a reader of a tree of a few kilobytes (resident: see mutate.bounded)


def check(reader: str, root: Path):
    """The property for one tree: the SourceData, or None after a one-line CovidnetError naming the tree."""
    try:
        data = read_source(reader, root, reader)
    except CovidnetError as e:
        message = str(e)
        assert "\n" not in message and str(root) in message, message
        return None
    for r in data.records:
        assert r.label in LABELS, r.label
        assert Path(r.path).is_file() and Path(r.path).resolve().is_relative_to(root.resolve()), r.path
        assert isinstance(r.patient_id, str), r.patient_id
        assert r.age is None or (isinstance(r.age, float) and math.isfinite(r.age) and r.age >= 0), r.age
        assert r.sex in (None, "M", "F"), r.sex
    for x in data.exclusions + data.anomalies:
        assert isinstance(x.item, str) and isinstance(x.reason, str) and isinstance(x.detail, str)
    return data


def seed_tree(reader: str, root: Path) -> tuple[list[str], list[str]]:
    return WRITERS[reader](root)


def test_there_is_a_tree_for_every_reader():
    assert set(WRITERS) == set(READERS)


@pytest.mark.parametrize("reader", sorted(READERS))
def test_every_seed_tree_reads_with_records(reader, tmp_path):
    seed_tree(reader, tmp_path)
    data = check(reader, tmp_path)
    assert data is not None and data.records, reader


def mutate_tree(root: Path, target: str, ops: list, byte_ops: list) -> None:
    """Mutate one file of the tree: a metadata file (or an .xlsx member, 'BOOK!member') as text, a DICOM
    or a workbook as bytes."""
    if "!" in target:
        book, member = target.split("!")
        rewrite_member(root / book, member, lambda b: apply_text(b, ops, "<"))
    elif target.endswith((".dcm", ".xlsx")):
        path = root / target
        path.write_bytes(apply(path.read_bytes(), byte_ops))
    else:
        sep = "\t" if target.endswith(".tsv") else " " if target.endswith(".txt") else ","
        path = root / target
        path.write_bytes(apply_text(path.read_bytes(), ops, sep))


TEXT_READERS = sorted(r for r in READERS if r not in ("folder", "kermany", "radiography-db"))


@pytest.mark.parametrize("reader", TEXT_READERS)
@given(pick=st.integers(0, 100), ops=text_ops(8), byte_ops=ops_strategy())
def test_mutated_metadata_gives_right_records_or_one_line_naming_the_file(reader, pick, ops, byte_ops):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "src"
        root.mkdir()
        text, binary = seed_tree(reader, root)
        targets = text + binary
        mutate_tree(root, targets[pick % len(targets)], ops, byte_ops)
        with bounded(max_resident=MAX_RESIDENT):
            check(reader, root)


FS_CHANGES = ("empty", "dir", "rename", "delete")


@pytest.mark.parametrize("reader", sorted(READERS))
@given(pick=st.integers(0, 100), change=st.sampled_from(FS_CHANGES), name=st.text(min_size=1, max_size=12))
def test_odd_files_in_the_tree_give_right_records_or_one_line(reader, pick, change, name):
    """Zero-byte images, a folder where an image was, a file renamed to any name, a file gone."""
    name = name.replace("/", "_").replace("\x00", "_")
    if name in (".", ".."):
        name = "_"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "src"
        root.mkdir()
        seed_tree(reader, root)
        files = sorted(p for p in root.rglob("*") if p.is_file())
        victim = files[pick % len(files)]
        if change == "empty":
            victim.write_bytes(b"")
        elif change == "dir":
            victim.unlink()
            victim.mkdir()
        elif change == "rename":
            try:
                victim.rename(victim.with_name(name))
            except (OSError, ValueError):  # a name the file system refuses (too long in bytes, ...)
                return
        else:
            victim.unlink()
        with bounded(max_resident=MAX_RESIDENT):
            check(reader, root)


LABEL_FILE = "p1 a.png COVID-19 cohen\np2 b.png normal rsna\np3 c.png pneumonia\n"
CLASSES = ("normal", "pneumonia", "COVID-19")


@given(ops=text_ops(3, 6))
def test_a_mutated_label_file_gives_its_rows_or_one_line_naming_it(ops):
    """``covidnet eval --labels FILE``: rows whose fields are what the line says, or a one-line error."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "test.txt"
        path.write_bytes(apply_text(LABEL_FILE.encode(), ops, " "))
        with bounded(max_resident=MAX_RESIDENT):
            try:
                rows = read_label_file(path, CLASSES)
            except CovidnetError as e:
                assert "\n" not in str(e) and str(e).startswith(str(path)), str(e)
                return
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        for row in rows:
            parts = lines[row.line - 1].split()
            assert [row.patient_id, row.filename, row.label] == parts[:3] and row.label in CLASSES


# --- what the properties found, kept as regression tests ----------------------------------------------------


@pytest.mark.parametrize("reader", ["cohen", "figure1", "actualmed", "nih", "rsna"])
@pytest.mark.parametrize("op", ["cut_field", "extra_field"])
def test_a_table_row_shorter_or_longer_than_its_header_is_read_not_a_traceback(reader, op, tmp_path):
    """Found by the property above: csv.DictReader gives None for the cells a short row lacks (and puts a
    long row's extra cells under the key None); the readers called .strip() on them: AttributeError."""
    text, _ = seed_tree(reader, tmp_path)
    for k in (1, 2):
        mutate_tree(tmp_path, text[0], [(op, k)], [])
    data = check(reader, tmp_path)
    assert data is not None and len(data.records) + len(data.exclusions) >= 2


def test_a_bimcv_table_that_is_not_utf8_or_is_a_folder_is_one_line_naming_it(tmp_path):
    """Found by the properties: bimcv read its TSVs with its own csv code: UnicodeDecodeError,
    IsADirectoryError, and None cells (AttributeError) went through as tracebacks."""
    seed_tree("bimcv", tmp_path)
    table = tmp_path / "derivatives" / "labels" / "labels_covid_posi.tsv"
    table.write_bytes(b"\x80" + table.read_bytes())
    with pytest.raises(CovidnetError, match=r"labels_covid_posi\.tsv: cannot be read"):
        read_source("bimcv", tmp_path)
    table.unlink()
    table.mkdir()
    with pytest.raises(CovidnetError, match=r"labels_covid_posi\.tsv: "):
        read_source("bimcv", tmp_path)
    table.rmdir()
    (tmp_path / "participants.tsv").write_text("participant\tage\tgender\nsub-S1\n")  # a short row
    assert check("bimcv", tmp_path).records


def test_a_header_with_a_newline_in_a_quoted_name_is_named_on_one_line(tmp_path):
    """Found by the property: the 'missing column' error quoted the header as read, and a quote mutated
    into it made the header span the file: a message of many lines."""
    (tmp_path / "metadata.csv").write_text('"patientid,finding\nA1,x.png\n')
    with pytest.raises(CovidnetError) as e:
        read_source("actualmed", tmp_path)
    assert "\n" not in str(e.value) and str(e.value).startswith(f"{tmp_path / 'metadata.csv'}: missing column")


@pytest.mark.parametrize(
    "cell, needle",
    [
        ('<c r="A9" t="s"><v>99</v></c>', "IndexError"),  # found by the property: a shared string past the table
        ('<c r="A9" t="s"><v>-1</v></c>', "IndexError"),  # Python's negative index read the last string
        ('<c r="A9" t="s"><v>x</v></c>', "ValueError"),
        ('<c r="A9" t="s"><v></v></c>', "TypeError"),
        ('<c r="ZZZZZZZZ9" t="s"><v>0</v></c>', "past Excel's last column"),  # would allocate 2e11 cells
    ],
)
def test_a_sheet_cell_that_points_nowhere_is_one_line_naming_the_workbook(tmp_path, cell, needle):
    seed_tree("sirm", tmp_path)
    book = tmp_path / "COVID.metadata.xlsx"
    rewrite_member(
        book,
        "xl/worksheets/sheet1.xml",
        lambda b: b.replace(b"</sheetData>", b'<row r="9">' + cell.encode() + b"</row></sheetData>"),
    )
    with bounded(max_resident=MAX_RESIDENT), pytest.raises(CovidnetError) as e:
        read_source("sirm", tmp_path)
    message = str(e.value)
    assert message.startswith(f"{book}: cannot be read as an Excel workbook") and needle in message, message


@pytest.mark.parametrize("reader", ["ricord", "stonybrook"])
@pytest.mark.parametrize(
    "tag, vr",
    [
        (b"\x08\x00\x60\x00", b"CS"),
        (b"\x10\x00\x20\x00", b"LO"),
        (b"\x18\x00\x01\x51", b"CS"),
        (b"\x20\x00\x0d\x00", b"UI"),
    ],
    ids=["Modality", "PatientID", "ViewPosition", "StudyInstanceUID"],
)
def test_a_dicom_header_element_with_a_broken_vr_leaves_its_file_out_not_a_traceback(reader, tag, vr, tmp_path):
    """Found with the DICOM image property's gap (pydicom converts a value when it is first read): ricord and
    stonybrook read Modality, PatientID, ViewPosition and StudyInstanceUID after the try around dcmread, so a
    mutated VR raised NotImplementedError out of the reader. Every value is now converted inside the try."""
    _, binary = seed_tree(reader, tmp_path)
    for rel in binary:
        path = tmp_path / rel
        path.write_bytes(path.read_bytes().replace(tag + vr, tag + vr[:1] + b"\x00"))
    data = check(reader, tmp_path)
    if data is not None:
        assert {e.reason for e in data.exclusions} <= {"unreadable image", "not an X-ray", "lateral view"}
        assert all(e.item.endswith(".dcm") for e in data.exclusions if e.reason == "unreadable image")
