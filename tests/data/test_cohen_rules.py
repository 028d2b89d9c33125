"""``--cohen-rules``: our cohen selection and the reference's (lindawangg/COVID-Net create_COVIDx.ipynb),
on a metadata.csv written here, through the build and the CLI, and their counts on the real folder
(docs/readers-vs-torchxrayvision.md)."""

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_cli import covidnet

from covidnet.cli import build_parser
from covidnet.data.build import BuildConfig, SourceSpec, build_dataset
from covidnet.data.sources import read_source
from covidnet.errors import UsageError

# filename, finding, view, url -> (label under ours, label under reference); None: left out
ROWS = [
    ("covid-radiopaedia.png", "COVID-19", "PA", "https://radiopaedia.org/cases/x", "COVID-19", "COVID-19"),
    ("covid-eurorad.png", "COVID-19", "AP", "https://www.eurorad.org/case/1", "COVID-19", None),
    ("covid-sirm.png", "COVID-19", "AP Supine", "https://www.sirm.org/2020/03/caso", "COVID-19", None),
    ("covid-mlwg.png", "COVID-19", "PA", "https://github.com/ml-workgroup/covid-19-image-repository", "COVID-19", None),
    ("covid-hier-eurorad.png", "Pneumonia/Viral/COVID-19", "PA", "https://www.eurorad.org/case/2", "COVID-19", None),
    ("covid-hier.png", "Pneumonia/Viral/COVID-19", "PA", "https://pubs.rsna.org/x", "COVID-19", "COVID-19"),
    ("covid-ards.png", "COVID-19, ARDS", "PA", "https://pubs.rsna.org/y", "COVID-19", None),  # not a key of its mapping
    (
        "sars-eurorad.png",
        "SARS",
        "PA",
        "https://www.eurorad.org/case/3",
        "pneumonia",
        "pneumonia",
    ),  # URL rule: COVID-19 only
    ("strep-hier.png", "Pneumonia/Bacterial/Streptococcus", "PA", "https://x.org", "pneumonia", "pneumonia"),
    ("pcp.png", "Pneumocystis", "PA", "https://x.org", "pneumonia", None),
    ("no-finding.png", "No Finding", "PA", "https://x.org", "normal", None),  # the reference maps only 'Normal'
    ("normal.png", "Normal", "PA", "https://x.org", "normal", "normal"),
    ("lowercase-view.png", "COVID-19", "ap", "https://x.org", "COVID-19", None),  # the reference matches views exactly
    ("lateral.png", "COVID-19", "L", "https://x.org", None, None),
    ("todo.png", "todo", "PA", "https://x.org", None, None),
]


@pytest.fixture
def cohen_root(tmp_path) -> Path:
    root = tmp_path / "cohen"
    (root / "images").mkdir(parents=True)
    with open(root / "metadata.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["patientid", "finding", "view", "modality", "folder", "filename", "url"])
        for k, (name, finding, view, url, _, _) in enumerate(ROWS):
            w.writerow([str(k), finding, view, "X-ray", "images", name, url])
            pixels = (np.random.default_rng(k).random((48, 48)) * 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / "images" / name)
    return root


@pytest.mark.parametrize("rules, column", [("ours", 4), ("reference", 5)])
def test_each_rule_keeps_its_rows_with_its_labels(cohen_root, rules, column):
    data = read_source("cohen", cohen_root, rules=rules)
    assert {r.path.name: r.label for r in data.records} == {row[0]: row[column] for row in ROWS if row[column]}
    assert len(data.records) + len(data.exclusions) == len(ROWS)


def test_reference_says_why_each_row_is_left_out(cohen_root):
    data = read_source("cohen", cohen_root, rules="reference")
    reasons = Counter(e.reason for e in data.exclusions)
    assert reasons == {
        "reaches COVIDx through another source": 4,
        "finding not in COVIDx classes": 3,
        "view not frontal or unknown": 1,
        "lateral view": 1,
        "unlabelled": 1,
    }
    other = [e for e in data.exclusions if e.reason == "reaches COVIDx through another source"]
    assert all("url" in e.detail and "Radiography Database" in e.detail for e in other)


def test_unknown_rules_are_a_usage_error(cohen_root):
    with pytest.raises(UsageError, match="ours, reference"):
        read_source("cohen", cohen_root, rules="covidx")


def test_build_passes_the_rules_to_cohen_and_strict_accepts_the_reference_filter(cohen_root, tmp_path):
    cfg = BuildConfig(
        sources=[SourceSpec("cohen", cohen_root, "cohen")],
        out=tmp_path / "ds",
        size=32,
        workers=1,
        progress=False,
        strict=True,
        cohen_rules="reference",
        val_fraction=0.0,
        test_fraction=0.0,
    )
    report = build_dataset(cfg)
    assert report["n_images"] == sum(1 for row in ROWS if row[5])
    assert report["excluded"]["by_reason"]["reaches COVIDx through another source"] == 4
    assert json.loads((tmp_path / "ds" / "config.json").read_text())["cohen_rules"] == "reference"


def test_cli_flag_maps_onto_the_config_field(cohen_root, tmp_path):
    args = build_parser().parse_args(["data", "build", "--source", f"cohen={cohen_root}", "--out", "x"])
    assert args.cohen_rules == "ours" == BuildConfig(sources=[], out=Path("x")).cohen_rules
    r = covidnet(
        "data",
        "build",
        "--source",
        f"cohen={cohen_root}",
        "--out",
        str(tmp_path / "ds"),
        "--size",
        "32",
        "--workers",
        "1",
        "--quiet",
        "--json",
        "--cohen-rules",
        "reference",
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["n_images"] == 5
    r = covidnet(
        "data", "build", "--source", f"cohen={cohen_root}", "--out", str(tmp_path / "ds2"), "--cohen-rules", "covidx"
    )
    assert r.returncode == 2 and "invalid choice" in r.stderr


@pytest.mark.realdata
def test_real_cohen_counts_under_both_rules(shared_data):
    """The figures in docs/readers-vs-torchxrayvision.md."""
    counts = {}
    for rules in ("ours", "reference"):
        data = read_source("cohen", shared_data / "sources" / "cohen", rules=rules)
        counts[rules] = Counter(r.label for r in data.records)
        counts[rules]["patients"] = len({r.patient_id for r in data.records})
        counts[rules].update(f"excluded: {e.reason}" for e in data.exclusions)
    assert counts["ours"] == {
        "normal": 19,
        "pneumonia": 78,
        "COVID-19": 427,
        "patients": 305,
        "excluded: lateral view": 55,
        "excluded: view not frontal or unknown": 39,
        "excluded: unlabelled": 28,
        "excluded: finding not in COVIDx classes": 7,
    }
    assert counts["reference"] == {
        "pneumonia": 42,
        "COVID-19": 248,
        "patients": 171,
        "excluded: reaches COVIDx through another source": 167,
        "excluded: lateral view": 55,
        "excluded: view not frontal or unknown": 39,
        "excluded: unlabelled": 28,
        "excluded: finding not in COVIDx classes": 74,
    }
