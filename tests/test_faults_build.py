"""`covidnet data build` killed with SIGKILL at chosen points (while images are read, just before the new store
is renamed into place, while an overwritten store is swapped out or removed): --out is then either absent or a
complete store, the old one or the new one; the next run removes what the killed one left beside it, says so
in one line, and builds the same store as an uninterrupted build (byte for byte). A driver runs the real command
(``covidnet.cli.main``) in a subprocess and kills its own process from inside the image stage, ``os.replace``,
the atomic swap or ``shutil.rmtree``: the same points on every run.

And a source tree of bad files (truncated, empty, a text file named .png, a file nobody may read, a name that is
not UTF-8) beside a metadata table with malformed rows builds, and report.json names each bad input."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from killpoints import driver, killed

from covidnet.cli import main
from covidnet.data.store import open_store

DRIVER = driver(
    """covidnet ARGS, killed (SIGKILL, by itself) at $KILL_AT:
read:N               after the N-th image is read and preprocessed
before:PREFIX:N      just before the N-th os.replace onto a name starting with PREFIX
replace:PREFIX:N     just after it
exchange:N           just after the N-th atomic swap of two folders
rmtree:PREFIX:N      half-way through the N-th shutil.rmtree of a folder whose name starts with PREFIX
$NO_EXCHANGE=1: the system cannot swap atomically (the fallback: rename aside, then in)
$DENY=NAME: opening a file called NAME is refused (PermissionError), as for a file of mode 000 when not root""",
    r"""
import builtins, shutil

import covidnet.data.build as build
import covidnet.data.build.images as images

if os.environ.get("DENY"):
    real_open = builtins.open

    def deny(file, *a, **k):
        if isinstance(file, (str, os.PathLike)) and os.path.basename(os.fspath(file)) == os.environ["DENY"]:
            raise PermissionError(13, "Permission denied", os.fspath(file))
        return real_open(file, *a, **k)

    builtins.open = deny
if os.environ.get("NO_EXCHANGE"):
    build._exchange = lambda a, b: False
if kind == "read":
    real_process = images._process

    def process(task):
        result = real_process(task)
        count[0] += 1
        if count[0] == int(arg[0]):
            die()
        return result

    images._process = process
elif kind == "exchange":
    real_exchange = build._exchange

    def exchange(a, b):
        done = real_exchange(a, b)
        count[0] += 1
        if count[0] == int(arg[0]):
            die()
        return done

    build._exchange = exchange
elif kind == "rmtree":
    real_rmtree = shutil.rmtree

    def rmtree(path, *a, **k):
        if os.path.basename(os.fspath(path)).startswith(arg[0]):
            count[0] += 1
            if count[0] == int(arg[1]):
                files = sorted(os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs)
                for f in files[: len(files) // 2]:
                    os.unlink(f)
                die()
        return real_rmtree(path, *a, **k)

    shutil.rmtree = rmtree
""",
)

LEFTOVER = re.compile(r"\.ds\.(building|replaced)-\w+")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """30 phantoms, the driver, and uninterrupted builds of seeds 0 and 1 (another split: another index.csv)."""
    root = tmp_path_factory.mktemp("faults_build")
    assert main(["data", "synth", "--out", str(root / "ph"), "--n", "30", "--size", "64", "--quiet"]) == 0
    script = root / "driver.py"
    script.write_text(DRIVER)
    for seed in (0, 1):
        r = build(root, script, root / f"ref{seed}" / "ds", seed=seed)
        assert r.returncode == 0, r.stderr
    return root, script


def build(
    root: Path, script: Path, out: Path, kill: str = "", seed: int = 0, overwrite: bool = False, env: dict | None = None
) -> subprocess.CompletedProcess:
    env = {**os.environ, "KILL_AT": kill, "OMP_NUM_THREADS": "1", **(env or {})}
    args = ["data", "build", "--source", f"cohen={root / 'ph'}", "--out", str(out), "--size", "32"]
    args += ["--workers", "1", "--quiet", "--seed", str(seed), *(["--overwrite"] if overwrite else [])]
    return subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, timeout=600, env=env, cwd=root
    )


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if LEFTOVER.fullmatch(p.name))


def counts(report: dict) -> tuple:
    return report["n_images"], report["n_patients"], report["totals"], report["excluded"]["by_reason"]


def assert_same_store(out: Path, ref: Path) -> None:
    """``out`` is complete (open_store opens it, report.json is there) and is ``ref``'s store byte for byte."""
    open_store(out)
    for name in ("images.npy", "index.csv", "train.txt", "val.txt", "test.txt"):
        assert (out / name).read_bytes() == (ref / name).read_bytes(), f"{out / name} differs from {ref / name}"
    report = lambda d: json.loads((d / "report.json").read_text())  # noqa: E731
    assert counts(report(out)) == counts(report(ref))


def removed_line(r: subprocess.CompletedProcess, n: int) -> None:
    lines = [x for x in r.stderr.splitlines() if "unfinished build folder" in x]
    assert len(lines) == 1 and f"removed {n} unfinished build folder(s) left by an interrupted build: " in lines[0]


@pytest.mark.slow
def test_a_new_build_killed_at_each_point_leaves_no_out_and_the_rerun_builds_the_same_store(setup):
    """Killed after 5 images, then (the rerun) just before the new store is renamed to --out: no --out either
    time, one hidden .ds.building-* beside it; the next run removes it, says so, and builds the reference."""
    root, script = setup
    where = root / "new"
    where.mkdir()
    out = where / "ds"
    killed(build(root, script, out, kill="read:5"))
    assert not out.exists() and len(leftovers(where)) == 1 and leftovers(where)[0].startswith(".ds.building-")
    r = build(root, script, out, kill="before:ds:1")
    killed(r)
    removed_line(r, 1)
    assert not out.exists() and len(leftovers(where)) == 1
    r = build(root, script, out)
    assert r.returncode == 0, r.stderr
    removed_line(r, 1)
    assert leftovers(where) == []
    assert_same_store(out, root / "ref0" / "ds")


@pytest.mark.slow
@pytest.mark.parametrize(
    "kill, env, at_out, left",
    [
        ("read:5", {}, "old", 1),  # while the images are read
        ("before:.ds.replaced-:1", {"NO_EXCHANGE": "1"}, "old", 2),  # fallback: before the old is moved aside
        ("exchange:1", {}, "new", 1),  # just after the swap: the old store, not yet removed, in .ds.building-*
        ("rmtree:.ds.building-:1", {}, "new", 1),  # half-way through removing the old store
        ("rmtree:.ds.replaced-:1", {"NO_EXCHANGE": "1"}, "new", 1),  # the same, in the fallback
    ],
)
def test_an_overwrite_killed_at_each_point_leaves_the_old_or_the_new_store_and_the_rerun_the_new(
    setup, kill, env, at_out, left
):
    """--overwrite of a complete store (seed 1) by another (seed 0), killed: --out is the old store or the new
    one, complete, and what is beside it is a hidden .ds.building-* or .ds.replaced-*; the rerun gives seed 0's."""
    root, script = setup
    where = root / f"over-{kill.replace(':', '_')}-{len(env)}"
    shutil.copytree(root / "ref1", where)
    out = where / "ds"
    killed(build(root, script, out, kill=kill, overwrite=True, env=env))
    assert_same_store(out, root / ("ref1" if at_out == "old" else "ref0") / "ds")
    assert len(leftovers(where)) == left
    r = build(root, script, out, overwrite=True)
    assert r.returncode == 0, r.stderr
    removed_line(r, left)
    assert leftovers(where) == [] and sorted(p.name for p in where.iterdir()) == ["ds"]
    assert_same_store(out, root / "ref0" / "ds")


@pytest.mark.slow
def test_an_overwrite_killed_between_the_two_renames_of_the_fallback_leaves_both_stores_whole(setup):
    """Without an atomic swap, the one point where --out is absent: just after the old store is renamed aside.
    Both stores are whole in hidden folders beside it; the rerun removes them and builds the new one."""
    root, script = setup
    where = root / "over-gap"
    shutil.copytree(root / "ref1", where)
    out = where / "ds"
    killed(build(root, script, out, kill="replace:.ds.replaced-:1", overwrite=True, env={"NO_EXCHANGE": "1"}))
    assert not out.exists()
    kept = {name.split("-")[0]: where / name for name in leftovers(where)}
    assert set(kept) == {".ds.building", ".ds.replaced"}
    assert_same_store(kept[".ds.replaced"], root / "ref1" / "ds")
    r = build(root, script, out, overwrite=True)
    assert r.returncode == 0, r.stderr
    removed_line(r, 2)
    assert_same_store(out, root / "ref0" / "ds")


def test_only_leftovers_of_the_same_out_are_removed(setup):
    root, script = setup
    where = root / "others"
    where.mkdir()
    mine = [".ds.building-abc123", ".ds.replaced-x_9"]
    others = [".ds.building", ".ds.buildingx", ".ds2.building-abc", "ds.building-abc", ".ds.building-a.b"]
    for name in mine + others:
        (where / name).mkdir()
    (where / ".ds.building-file").write_text("a file, not a build folder")
    r = build(root, script, where / "ds")
    assert r.returncode == 0, r.stderr
    removed_line(r, 2)
    assert all(str(where / name) in r.stderr for name in mine)
    assert sorted(p.name for p in where.iterdir()) == sorted(["ds", ".ds.building-file", *others])


# --- a tree of bad files ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bad_tree(setup, tmp_path_factory):
    """A folder-layout source of good phantoms and bad files, and a cohen source whose metadata.csv has a short
    row, a long one, one without a label, one with a stray quote, built with the CLI (in the driver, so that the
    file of mode 000 is refused also when the tests run as root). Returns (tree, run, report)."""
    root, script = setup
    tree = tmp_path_factory.mktemp("bad_tree")
    synth = ["data", "synth", "--out", str(tree / "ph"), "--n", "12", "--size", "64", "--seed", "3", "--quiet"]
    assert main(synth) == 0
    images = sorted((tree / "ph" / "images").iterdir())
    folder = tree / "folder"
    for k, p in enumerate(images[:8]):
        (folder / ("NORMAL" if k % 2 else "COVID")).mkdir(parents=True, exist_ok=True)
        shutil.move(p, folder / ("NORMAL" if k % 2 else "COVID") / p.name)
    bad = folder / "NORMAL"
    png = images[8].read_bytes()
    (bad / "truncated.png").write_bytes(png[: len(png) // 2])
    (bad / "empty.png").write_bytes(b"")
    (bad / "text.png").write_text("not an image\n")
    shutil.copy(images[9], bad / "png_named.jpg")  # read by its content: kept
    shutil.copy(images[10], bad / "unreadable.png")
    os.chmod(bad / "unreadable.png", 0)
    with open(os.fsencode(bad) + b"/caf\xe9.png", "wb") as f:  # a Latin-1 name
        f.write(images[11].read_bytes())

    cohen = root / "ph"  # the 30 phantoms of setup, under their own metadata, plus the bad rows
    src = tree / "cohen"
    shutil.copytree(cohen, src)
    with open(src / "metadata.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    cols = list(rows[0])
    names = [r["filename"] for r in rows]
    unlabelled, quoted = names[0], names[1]
    rows = [r for r in rows if r["filename"] not in (unlabelled, quoted)]

    def line(**cells) -> str:
        b = io.StringIO()
        row = {**dict.fromkeys(cols, ""), "view": "PA", "modality": "X-ray", "folder": "images", **cells}
        csv.DictWriter(b, cols, lineterminator="").writerow(row)
        return b.getvalue()

    body = [line(**r) for r in rows]
    shutil.copy(images[8], src / "images" / "long.png")
    short = "p-short,0,F"
    long = line(patientid="p-long", finding="COVID-19", filename="long.png") + ",x,y,z"
    nolabel = line(patientid="p-nolabel", filename=unlabelled)
    stray = line(patientid="p-quote", finding="COVID-19", filename=quoted).replace(",images,", ',"images,', 1)
    (src / "metadata.csv").write_text("\n".join([",".join(cols), *body, short, long, nolabel, stray]) + "\n")
    out = tree / "ds"
    args = ["data", "build", "--source", f"folder={folder}", "--source", f"cohen={src}", "--out", str(out)]
    args += ["--size", "32", "--workers", "1", "--quiet"]
    r = subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "KILL_AT": "", "DENY": "unreadable.png" if os.geteuid() == 0 else ""},
    )
    report = json.loads((out / "report.json").read_text()) if (out / "report.json").exists() else None
    return tree, r, report, len(body) + 2  # the lines of short and long


def test_a_tree_of_bad_files_builds_and_the_report_names_each_by_its_path(bad_tree):
    tree, r, report, short_line = bad_tree
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    items = {e["item"]: e for e in report["excluded"]["items"]}
    bad = tree / "folder" / "NORMAL"
    expected = {
        str(bad / "truncated.png"): ("unreadable image", "truncated"),
        str(bad / "empty.png"): ("unreadable image", "empty file"),
        str(bad / "text.png"): ("unreadable image", "not an image"),
        str(bad / "unreadable.png"): ("unreadable image", "Permission denied"),
        os.fsdecode(os.fsencode(bad) + b"/caf\xe9.png"): ("file name not UTF-8", "caf\\udce9.png"),
    }
    for path, (reason, detail) in expected.items():
        assert path in items, f"{path} not named in report.json"
        assert items[path]["reason"] == reason and detail in items[path]["detail"], items[path]
    assert not any("png_named.jpg" in i for i in items)  # a PNG named .jpg is read by its content
    meta = tree / "cohen" / "metadata.csv"
    assert items[f"{meta}:{short_line}"]["reason"] == "not an X-ray"  # the short row: its cells missing, ""
    nolabel = next(e for e in report["excluded"]["items"] if e["reason"] == "unlabelled")
    assert nolabel["item"].startswith(str(tree / "cohen" / "images")), nolabel  # its image, the line in the detail
    assert nolabel["detail"].startswith(f"{meta}:{short_line + 2}: ")
    assert items[f"{meta}:{short_line + 3}"]["reason"] == "image missing"  # the stray quote took the rest of the row
    assert len(report["excluded"]["items"]) == 8
    index = (tree / "ds" / "index.csv").read_text()
    assert "long.png" in index and "png_named.jpg" in index  # the long row kept, its extra cells dropped
    for name in expected:
        assert Path(name).name not in index
    lines = (tree / "ds" / "records.csv").read_text(encoding="utf-8").splitlines()
    assert any("caf\\udce9.png" in x and "file name not UTF-8" in x for x in lines)  # escaped, with its reason
