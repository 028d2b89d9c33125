"""`covidnet data build --severity`: COVIDNet-S scores joined by file-name stem, bad rows explained,
offsets for COVID-RiskNet checked; phantoms (whose true extent the generator knows) and the real file."""

import csv
import json
from collections import defaultdict
from pathlib import Path

import pytest
from test_build import rewrite_metadata
from test_cli import covidnet

from covidnet.data.build import BuildConfig, SourceSpec, build_dataset
from covidnet.data.store import open_store
from covidnet.data.synth import SynthConfig, write_phantom_dataset, write_severity_file
from covidnet.errors import ConfigError, CovidnetError


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    return write_phantom_dataset(
        tmp_path_factory.mktemp("sev") / "cohen", SynthConfig(n=36, seed=2, size=96), progress=False
    )


def build(tmp_path, source: Path, severity: Path | None, **kw) -> dict:
    return build_dataset(
        BuildConfig(
            sources=[SourceSpec("cohen", source, "cohen")],
            out=tmp_path / "out",
            size=64,
            workers=1,
            progress=False,
            severity=severity,
            **kw,
        )
    )


def index(out: Path) -> list[dict]:
    return list(csv.DictReader(open(out / "index.csv")))


def append_rows(path: Path, rows: list[list]) -> None:
    with open(path, "a", newline="") as f:
        csv.writer(f).writerows(rows)


def test_phantom_severity_joins_every_image_with_the_generators_truth(phantoms, tmp_path):
    sev = write_severity_file(phantoms, tmp_path / "sev.csv", labels=("pneumonia", "COVID-19"))
    report = build(tmp_path, phantoms, sev)
    truth = {
        r["filename"]: (float(r["phantom_geographic"]), float(r["phantom_opacity"]), r["finding"])
        for r in csv.DictReader(open(phantoms / "metadata.csv"))
    }
    rows = index(tmp_path / "out")
    scored = [r for r in rows if r["geographic"]]
    assert len(scored) == sum(1 for g, o, f in truth.values() if "No Finding" not in f) > 10
    for r in rows:
        g, o, finding = truth[r["filename"]]
        if "No Finding" in finding:
            assert r["geographic"] == r["opacity"] == ""  # normal images were not in the severity file
        else:
            assert (float(r["geographic"]), float(r["opacity"])) == (g, o)
    s = report["severity"]
    assert s["rows"] == s["rows_joined"] == s["images_scored"] == len(scored) and s["excluded"]["count"] == 0
    assert sum(s["in_dataset"]["images"].values()) == len(scored)
    splits = defaultdict(set)
    for r in scored:
        splits[r["patient_id"]].add(r["split"])
    assert all(len(v) == 1 for v in splits.values())
    store = open_store(tmp_path / "out")
    assert store.column("geographic")[[i for i, r in enumerate(rows) if r["geographic"]]].min() >= 0


def test_unmatched_rows_are_counted_and_fail_the_build_only_with_strict(phantoms, tmp_path):
    sev = write_severity_file(phantoms, tmp_path / "sev.csv")
    append_rows(sev, [["nosuch-1.png", 3, 2, 5, 6, "x", "cohen"], ["nosuch-2.jpg", 1, 1, 2, 1, "y", "cohen"]])
    report = build(tmp_path, phantoms, sev)
    assert report["severity"]["excluded"]["by_reason"] == {"severity row matches no image": 2}
    assert report["severity"]["rows"] - report["severity"]["rows_joined"] == 2
    items = report["severity"]["excluded"]["items"]
    assert {i["item"].rsplit(":", 1)[1] for i in items} == {
        str(report["severity"]["rows"]),
        str(report["severity"]["rows"] + 1),
    }
    assert "nosuch-1" in items[0]["detail"]
    with pytest.raises(CovidnetError, match=r"--strict: 2 row\(s\) of the severity file left out .*nosuch-1"):
        build(tmp_path, phantoms, sev, strict=True, overwrite=True)


def test_out_of_range_and_missing_scores_are_excluded_with_reasons(phantoms, tmp_path):
    meta = list(csv.DictReader(open(phantoms / "metadata.csv")))
    names = [r["filename"] for r in meta if "COVID" in r["finding"]][:3]
    sev = tmp_path / "sev.csv"
    with open(sev, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filename", "Geographic", "Opacity", "Sum", "Product", "patientid", "dataset"])
        w.writerows(
            [
                [names[0], 9.5, 2, "", "", "", "cohen"],
                [names[1], "", "", "", "", "", "cohen"],
                [names[2], 2.3333333333333335, 1.5, "", "", "", "cohen"],
                [names[2], 4, 4, "", "", "", "cohen"],
            ]
        )
    report = build(tmp_path, phantoms, sev)
    s = report["severity"]
    assert s["excluded"]["by_reason"] == {
        "severity score out of range": 1,
        "severity score missing": 1,
        "second severity row for one image": 1,
    }
    by_line = {i["item"].rsplit(":", 1)[1]: i for i in s["excluded"]["items"]}
    assert "geographic 9.5 outside 0-8" in by_line["2"]["detail"] and "geographic ''" in by_line["3"]["detail"]
    scored = {r["filename"]: r for r in index(tmp_path / "out") if r["geographic"]}
    assert set(scored) == {names[2]}
    assert float(scored[names[2]]["geographic"]) == pytest.approx(2.3333333333333335, abs=1e-9)
    assert float(scored[names[2]]["opacity"]) == 1.5


def test_a_file_without_score_columns_stops_before_any_work(phantoms, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("filename,score\na.png,3\n")
    with pytest.raises(ConfigError, match="Geographic and Opacity; missing geographic, opacity"):
        build(tmp_path, phantoms, bad)
    with pytest.raises(ConfigError, match="severity file not found"):
        build(tmp_path, phantoms, tmp_path / "absent.csv")
    assert not (tmp_path / "out").exists()


def test_missing_non_numeric_and_negative_offsets_are_explained(phantoms, tmp_path):
    src = tmp_path / "src"
    import shutil

    shutil.copytree(phantoms, src)
    covid = []

    def edit(rows):
        covid.extend(r for r in rows if "COVID" in r["finding"])
        covid[0]["offset"], covid[1]["offset"], covid[2]["offset"] = "", "-4", "soon"

    rewrite_metadata(src, edit)
    report = build(tmp_path, src, None)
    risk = report["risk"]
    assert risk["excluded"]["by_reason"] == {"no offset": 1, "negative offset": 1, "offset not a number": 1}
    assert risk["covid_images"] == len(covid) and risk["with_offset"] == len(covid) - 3
    assert report["severity"] is None
    offsets = {r["filename"]: r["offset"] for r in index(tmp_path / "out")}
    assert [offsets[c["filename"]] for c in covid[:3]] == ["", "", ""]
    assert offsets[covid[3]["filename"]] == covid[3]["offset"]


def test_cli_reports_the_join_and_strict_is_one_line(phantoms, tmp_path):
    sev = write_severity_file(phantoms, tmp_path / "sev.csv")
    append_rows(sev, [["nosuch.png", 3, 2, 5, 6, "x", "cohen"]])
    r = covidnet(
        "data",
        "build",
        "--source",
        f"cohen={phantoms}",
        "--out",
        str(tmp_path / "a"),
        "--size",
        "64",
        "--severity",
        str(sev),
        "--quiet",
        "--workers",
        "1",
    )
    assert r.returncode == 0, r.stderr
    assert "severity row matches no image" in r.stderr and "nosuch" in r.stderr
    assert "severity: " in r.stdout and "1  severity row matches no image" in r.stdout and "risk: " in r.stdout
    r = covidnet(
        "data",
        "build",
        "--source",
        f"cohen={phantoms}",
        "--out",
        str(tmp_path / "b"),
        "--size",
        "64",
        "--severity",
        str(sev),
        "--quiet",
        "--workers",
        "1",
        "--strict",
    )
    assert r.returncode == 1 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "--strict" in r.stderr and "nosuch" in r.stderr and not (tmp_path / "b").exists()


@pytest.mark.realdata
def test_real_severity_file_joins_335_images_and_explains_the_rest(shared_data, tmp_path):
    s = shared_data / "sources"
    report = build_dataset(
        BuildConfig(
            sources=[SourceSpec("cohen", s / "cohen", "cohen"), SourceSpec("figure1", s / "figure1", "figure1")],
            out=tmp_path / "out",
            size=32,
            progress=False,
            severity=shared_data / "covidx" / "severity_annotations.csv",
        )
    )
    sev = report["severity"]
    assert sev["rows"] == 479
    # 335 rows name an image under sources/ (323 cohen, 12 figure1); 3 of them have no scores
    assert sev["excluded"]["by_reason"] == {"severity row matches no image": 127, "severity score missing": 20}
    assert sev["rows_joined"] == sev["images_scored"] == 332
    rows = [r for r in index(tmp_path / "out") if r["geographic"]]
    assert len(rows) == sum(sev["in_dataset"]["images"].values()) >= 330
    assert {r["source"] for r in rows} == {"cohen", "figure1"}
    assert all(0 <= float(r[k]) <= 8 for r in rows for k in ("geographic", "opacity"))
    splits = defaultdict(set)
    for r in rows:
        splits[(r["source"], r["patient_id"])].add(r["split"])
    assert all(len(v) == 1 for v in splits.values()) and all(
        sev["in_dataset"]["images"][s] > 10 for s in ("train", "val", "test")
    )
    assert report["risk"]["excluded"]["by_reason"].get("no offset", 0) > 0
    json.dumps(report)  # the report stays plain JSON
