"""The files the project reads back: a built store's ``index.csv``, ``contract.json``, ``config.json`` and
the headers of ``images.npy`` and ``masks.npy`` (what training, evaluation and the audit open), and a
study's ``study.json`` (read back by ``study shortcuts --resume``). Mutated, each gives a one-line
``CovidnetError`` naming it, or a store whose every answer is right; never another exception."""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mutate import apply, apply_text, bounded, ops_strategy, text_ops

from covidnet.cli import main
from covidnet.data.records import BINARY_CLASSES, CLASSES
from covidnet.data.store import open_store
from covidnet.errors import CovidnetError

MAX_RESIDENT = 64 << 20


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory) -> Path:
    """24 phantoms with their lung masks, built at 32 px by the CLI."""
    root = tmp_path_factory.mktemp("store")
    assert main(["data", "synth", "--out", str(root / "ph"), "--n", "24", "--size", "64", "--quiet"]) == 0
    build = ["data", "build", "--source", f"cohen={root / 'ph'}", "--out", str(root / "ds"), "--size", "32"]
    build += ["--lung-masks", f"phantom={root / 'ph' / 'lungmasks'}", "--workers", "1", "--quiet"]
    assert main([*build, "--val-fraction", "0.2", "--test-fraction", "0.2"]) == 0
    return root / "ds"


def consume(root: Path) -> None:
    """Everything a consumer asks a store (training, eval, the audit), each answer checked."""
    store = open_store(root)
    n = len(store.images)
    rows = store.rows()
    assert rows.dtype == np.int64 and ((rows >= 0) & (rows < n)).all() and len(rows) == n
    for split in ("train", "val", "test"):
        assert set(store.rows(split)) <= set(rows)
    try:
        labels = store.labels(rows)
        assert ((labels >= 0) & (labels < len(CLASSES))).all()
    except CovidnetError as e:  # a binary release's 'negative' rows: three-class use is refused
        assert "--binary" in str(e)
    binary = store.labels(rows, binary=True)
    assert ((binary >= 0) & (binary < len(BINARY_CLASSES))).all()
    assert len(store.patients(rows)) == len(store.sources(rows)) == len(store.names(rows)) == n
    for column in ("age", "geographic", "opacity", "offset"):
        assert store.column(column, rows).dtype == np.float64
    assert store.read(rows[:4]).shape == (min(4, n), store.size, store.size)
    if store.masks is not None:
        assert store.read_masks(store.mask_rows()[:2]).shape[1:] == (store.size, store.size)
    assert isinstance(store.build_config(), dict)
    assert store.contract.stored_size == store.size


def check(root: Path, mutated: Path) -> None:
    with bounded(max_resident=MAX_RESIDENT):
        try:
            consume(root)
        except CovidnetError as e:
            message = str(e)
            assert "\n" not in message and str(root) in message, message


def test_the_built_store_answers_everything(store_dir):
    consume(store_dir)


TEXT = ["index.csv", "contract.json", "config.json"]


@given(which=st.sampled_from(TEXT), ops=text_ops(40, 6), drop_contract=st.booleans())
def test_a_mutated_index_contract_or_config_is_one_line_naming_it_or_read_right(store_dir, which, ops, drop_contract):
    with tempfile.TemporaryDirectory() as tmp:
        root = shutil.copytree(store_dir, Path(tmp) / "ds")
        path = root / which
        path.write_bytes(apply_text(path.read_bytes(), ops))
        if drop_contract and which == "config.json":  # a store from before contract.json: config.json says it
            (root / "contract.json").unlink()
        check(root, path)


@given(which=st.sampled_from(["images.npy", "masks.npy"]), ops=ops_strategy(4))
def test_a_mutated_array_header_is_one_line_naming_it_or_read_right(store_dir, which, ops):
    with tempfile.TemporaryDirectory() as tmp:
        root = shutil.copytree(store_dir, Path(tmp) / "ds")
        path = root / which
        data = path.read_bytes()
        head = 128  # NumPy's .npy header (magic, version, length, the dict), padded to 64 bytes
        path.write_bytes(apply(data[:head], ops) + data[head:])
        check(root, path)


# --- a study's study.json, read back by --resume ----------------------------------------------------------

STUDY = [
    *["study", "shortcuts", "--variants", "baseline", "--seeds", "1", "--epochs", "1", "--resamples", "5"],
    *["--train-option", "max_steps=1", "--train-option", "precise_bn=0", "--device", "cpu", "--quiet"],
]


@pytest.fixture(scope="module")
def study_dir(store_dir, tmp_path_factory) -> Path:
    """A complete one-run study on the phantom store."""
    out = tmp_path_factory.mktemp("study") / "study"
    assert main([*STUDY, "--data", str(store_dir), "--out", str(out)]) == 0
    return out


@pytest.mark.slow
@settings(max_examples=max(5, settings().max_examples // 4))  # each example resumes a study: seconds
@given(ops=text_ops(30, 4))
def test_a_mutated_study_json_is_one_line_naming_it_or_the_study_resumes(store_dir, study_dir, ops, capsys):
    with tempfile.TemporaryDirectory() as tmp:
        out = shutil.copytree(study_dir, Path(tmp) / "study")
        path = out / "study.json"
        path.write_bytes(apply_text(path.read_bytes(), ops))
        capsys.readouterr()
        with bounded(max_resident=256 << 20):
            rc = main([*STUDY, "--data", str(store_dir), "--out", str(out), "--resume"])
        err = capsys.readouterr().err
        if rc == 0:  # the runs are all done: resuming rewrites study.json from their results
            assert json.loads(path.read_text())["state"] == "complete"
        else:
            lines = err.strip().splitlines()
            assert rc == 1 and len(lines) == 1 and str(out) in lines[0], err


# --- what the properties found, kept as regression tests ----------------------------------------------------


def damaged_copy(store_dir: Path, tmp_path: Path) -> Path:
    return shutil.copytree(store_dir, tmp_path / "ds")


@pytest.mark.parametrize(
    "old, new, needle",
    [
        (",normal,negative,", ",normal?,negative,", "label 'normal?'"),  # was a ValueError in store.labels
        (",normal,negative,", ",normal,neg,", "binary label 'neg'"),
        ("\n3,", "\n4,", "row '4' where 3 belongs"),  # was a silent misalignment of labels and pixels
    ],
)
def test_a_damaged_index_row_is_one_line_naming_the_file_and_line(store_dir, tmp_path, old, new, needle):
    root = damaged_copy(store_dir, tmp_path)
    index = root / "index.csv"
    text = index.read_text()
    assert old in text
    index.write_text(text.replace(old, new, 1))
    with pytest.raises(CovidnetError, match=rf"^{index}:\d+: {re.escape(needle)}"):
        open_store(root)


def test_a_non_number_where_a_number_goes_is_one_line_naming_the_index(store_dir, tmp_path):
    """Found by the property: store.column('age') raised ValueError on an age that is not a number."""
    root = damaged_copy(store_dir, tmp_path)
    index = root / "index.csv"
    lines = index.read_text().splitlines()
    header = lines[0].split(",")
    cells = lines[1].split(",")
    cells[header.index("age")] = "sixty"
    index.write_text("\n".join([lines[0], ",".join(cells), *lines[2:]]) + "\n")
    with pytest.raises(CovidnetError, match=rf"^{index}:2: age 'sixty' is not a number"):
        open_store(root)


@pytest.mark.parametrize("which", ["images.npy", "masks.npy"])
def test_a_cut_array_header_is_one_line_naming_the_array(store_dir, tmp_path, which):
    """Found by the property: np.load raised ValueError, SyntaxError or tokenize.TokenError on a damaged
    header, a traceback in every command that opens the store."""
    root = damaged_copy(store_dir, tmp_path)
    path = root / which
    data = path.read_bytes()
    path.write_bytes(data[:64] + data[96:])
    with pytest.raises(CovidnetError, match=rf"^{path}: not a readable \.npy array"):
        store = open_store(root)
        assert store.masks is not None


def test_a_config_json_that_is_not_json_is_one_line_naming_it(store_dir, tmp_path):
    """Found by the property: a store without contract.json falls back on config.json, and read it with a
    bare json.loads (JSONDecodeError); build_config returned a list when the file held one."""
    root = damaged_copy(store_dir, tmp_path)
    (root / "contract.json").unlink()
    config = root / "config.json"
    config.write_text("{")
    with pytest.raises(CovidnetError, match=rf"^{config}: no readable size and top_crop"):
        open_store(root)
    config.write_text('{"size": 32, "top_crop": 0.08}')
    store = open_store(root)
    config.write_text("[]")
    with pytest.raises(CovidnetError, match=rf"^{config}: not a JSON object"):
        store.build_config()


@pytest.mark.parametrize("text", ["[]", '{"stored_size": 3}', '{"stored_size": 32, "intensity": "loud"}'])
def test_a_contract_json_of_the_wrong_shape_or_values_is_one_line_naming_it(store_dir, tmp_path, text):
    """Found by the property: a contract.json holding a list raised AttributeError, and one whose values
    the contract refuses said what was wrong (--intensity must be one of ...) without naming the file."""
    root = damaged_copy(store_dir, tmp_path)
    (root / "contract.json").write_text(text)
    with pytest.raises(CovidnetError, match=rf"^{root / 'contract.json'}: not a readable preprocessing contract"):
        open_store(root)


@pytest.mark.parametrize("text", [b"\x80{", b"{", b"[]", b'{"config": 3}', b'{"state": "running"}'])
def test_a_study_json_that_is_not_a_study_is_one_line_naming_it(store_dir, study_dir, tmp_path, capsys, text):
    """Found by the property: --resume read study.json with a bare json.loads(...)["config"]: UnicodeDecodeError,
    JSONDecodeError, TypeError or KeyError as a traceback."""
    out = shutil.copytree(study_dir, tmp_path / "study")
    (out / "study.json").write_bytes(text)
    capsys.readouterr()
    assert main([*STUDY, "--data", str(store_dir), "--out", str(out), "--resume"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"covidnet: error: {out / 'study.json'}: not a readable study file") and "\n" not in err
