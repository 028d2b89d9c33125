"""`covidnet data synth` and `covidnet data build` run as a user runs them."""

import json

import pytest
from test_cli import covidnet


def test_synth_then_build_through_the_cli(tmp_path):
    r = covidnet("data", "synth", "--out", str(tmp_path / "ph"), "--n", "30", "--size", "96", "--seed", "2", "--quiet")
    assert r.returncode == 0, r.stderr
    r = covidnet(
        "data",
        "build",
        "--source",
        f"cohen={tmp_path / 'ph'}",
        "--out",
        str(tmp_path / "ds"),
        "--size",
        "64",
        "--quiet",
        "--json",
    )
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["n_images"] == 30 and all(c["passed"] for c in report["checks"].values())
    assert (tmp_path / "ds" / "train.txt").read_text().count("\n") == sum(report["totals"]["train"].values())


def test_build_table_output_names_splits_and_exclusions(tmp_path):
    covidnet("data", "synth", "--out", str(tmp_path / "ph"), "--n", "12", "--size", "64", "--quiet")
    r = covidnet(
        "data",
        "build",
        "--source",
        f"cohen={tmp_path / 'ph'}",
        "--out",
        str(tmp_path / "ds"),
        "--size",
        "32",
        "--quiet",
    )
    assert r.returncode == 0, r.stderr
    assert "train" in r.stdout and "COVID-19" in r.stdout and "checks:" in r.stdout and "FAILED" not in r.stdout


@pytest.mark.parametrize(
    "args, needle, code",
    [
        (["--source", "cohen=/no/such/folder"], "does not exist", 1),
        (["--source", "nosuch=/tmp"], "unknown source reader", 2),
        (["--source", "cohen"], "READER=PATH", 2),
    ],
)
def test_bad_sources_give_one_line_and_no_output(tmp_path, args, needle, code):
    r = covidnet("data", "build", *args, "--out", str(tmp_path / "ds"), "--quiet")
    assert r.returncode == code
    assert needle in r.stderr and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not (tmp_path / "ds").exists()


def test_synth_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "f").write_text("keep")
    r = covidnet("data", "synth", "--out", str(tmp_path / "x"), "--n", "4", "--quiet")
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1 and (tmp_path / "x" / "f").exists()


@pytest.mark.realdata
def test_real_sources_build_with_the_official_split(shared_data, tmp_path):
    s, c = shared_data / "sources", shared_data / "covidx"
    r = covidnet(
        "data",
        "build",
        *[f"--source={n}={s / n}" for n in ("cohen", "figure1", "nih", "kermany")],
        "--split-file",
        str(c / "train_COVIDx3.txt"),
        "--split-file",
        str(c / "test_COVIDx3.txt"),
        "--out",
        str(tmp_path / "ds"),
        "--size",
        "64",
        "--quiet",
        "--json",
    )
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["official_split"]["matched"]["test"] >= 53
    assert report["totals"]["val"]["COVID-19"] > 0  # carved from the official train split, by patient


def test_a_bad_image_is_named_on_stderr_and_the_build_finishes(tmp_path):
    covidnet("data", "synth", "--out", str(tmp_path / "ph"), "--n", "8", "--size", "64", "--quiet")
    bad = sorted((tmp_path / "ph" / "images").iterdir())[0]
    bad.write_bytes(bad.read_bytes()[:100])
    r = covidnet(
        "data",
        "build",
        "--source",
        f"cohen={tmp_path / 'ph'}",
        "--out",
        str(tmp_path / "ds"),
        "--size",
        "32",
        "--quiet",
    )
    assert r.returncode == 0, r.stderr
    warnings = [l for l in r.stderr.splitlines() if "warning" in l]
    assert len(warnings) == 1 and bad.name in warnings[0] and "unreadable image" in warnings[0]
    r = covidnet(
        "data", "build", "--source", f"cohen={tmp_path / 'ph'}", "--out", str(tmp_path / "ds2"), "--quiet", "--strict"
    )
    assert r.returncode == 1 and not (tmp_path / "ds2").exists()
