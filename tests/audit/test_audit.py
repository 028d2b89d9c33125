"""The shortcut audit: known answers on phantom data with and without a planted source signature,
and the parts on their own."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from test_cli import covidnet

from covidnet.audit import LUNG_BOX, leakage, occlude, population, run_audit
from covidnet.data.build import BuildConfig, SourceSpec, build_dataset
from covidnet.data.synth import SynthConfig, write_phantom_dataset
from covidnet.train import TrainConfig, train


def hospitals(root: Path, shortcut: str | None) -> Path:
    """Two phantom hospitals as two sources, the shape of COVIDx's confounding: A sends the COVID-19
    cases, B mostly controls (and a few COVID-19 cases).

    With ``shortcut``, A's images carry a burnt-in marker and their label follows the hospital, not
    the image (they are drawn without disease): the marker is then the only way to classify them, so a
    model must use it — the known answer the audit has to find. Without, A's COVID-19 images show the
    disease and carry nothing else."""
    if shortcut:
        a = write_phantom_dataset(
            root / "a",
            SynthConfig(
                n=150, seed=11, size=128, hospitals=1, class_mix={"normal": 1.0}, shortcut=shortcut, shortcut_label=None
            ),
            progress=False,
        )
        rows = list(csv.DictReader(open(a / "metadata.csv")))
        for r in rows:
            r["finding"] = "Pneumonia/Viral/COVID-19"
        with open(a / "metadata.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    else:
        a = write_phantom_dataset(
            root / "a", SynthConfig(n=150, seed=11, size=128, hospitals=1, class_mix={"COVID-19": 1.0}), progress=False
        )
    b = write_phantom_dataset(
        root / "b",
        SynthConfig(
            n=150, seed=12, size=128, hospitals=1, class_mix={"COVID-19": 0.1, "normal": 0.45, "pneumonia": 0.45}
        ),
        progress=False,
    )
    build_dataset(
        BuildConfig(
            sources=[SourceSpec("cohen", a, "hosp-a"), SourceSpec("cohen", b, "hosp-b")],
            out=root / "ds",
            size=64,
            val_fraction=0.15,
            test_fraction=0.25,
            workers=1,
            progress=False,
        )
    )
    train(TrainConfig(data=str(root / "ds"), out=str(root / "run"), epochs=8, lr=3e-4, progress=False))
    return root


@pytest.fixture(scope="module")
def with_marker(tmp_path_factory):
    return hospitals(tmp_path_factory.mktemp("marker"), "marker")


@pytest.fixture(scope="module")
def without(tmp_path_factory):
    return hospitals(tmp_path_factory.mktemp("clean"), None)


@pytest.mark.slow
def test_planted_shortcut_fails_source_predictability_and_occlusion(with_marker):
    a = run_audit(str(with_marker / "run" / "best.pt"), str(with_marker / "ds"))
    sp = a["tests"]["source_predictability"]
    assert sp["verdict"] == "fail" and sp["worst_label"] == "COVID-19"
    assert sp["features_balanced_accuracy"] > 0.8
    oc = a["tests"]["occlusion"]
    assert oc["verdict"] == "fail" and oc["auc"]["lungs"] >= 0.7  # it classifies without the lungs


@pytest.mark.slow
def test_without_a_signature_source_predictability_does_not_fail(without):
    a = run_audit(str(without / "run" / "best.pt"), str(without / "ds"))
    sp = a["tests"]["source_predictability"]
    assert sp["verdict"] != "fail" and sp["excess_over_chance"] < 0.2
    assert sp["mutual_information_share_of_label"] > 0.3  # the dataset itself is confounded: said, as a warning
    oc = a["tests"]["occlusion"]
    assert oc["verdict"] == "ok" and oc["auc"]["none"] > 0.8  # the model reads the lungs
    ws = a["tests"]["within_source"]  # within hospital B, where the source gives nothing away, it still separates
    within_b = next(p for p in ws["pairs"] if p["source"] == "hosp-b" and p["classes"] == ["normal", "pneumonia"])
    assert within_b["auc"]["value"] > 0.8
    assert [t["test"] for t in a["summary"]] == [
        "within-source discrimination",
        "source predictability",
        "leave-one-source-out",
        "occlusion",
        "leakage",
        "population confounders",
    ]


@pytest.mark.slow
def test_cli_writes_report_with_summary_first_and_json(without, tmp_path):
    r = covidnet(
        "audit",
        "--checkpoint",
        str(without / "run" / "best.pt"),
        "--data",
        str(without / "ds"),
        "--report",
        str(tmp_path / "rep"),
        "--json",
        str(tmp_path / "a.json"),
    )
    assert r.returncode == 0, r.stderr
    page = (tmp_path / "rep" / "index.html").read_text()
    assert page.index('id="summary"') < page.index("audit.png") and "not for diagnostic use" in page
    assert json.loads((tmp_path / "a.json").read_text())["tests"]["leakage"]["verdict"] == "ok"
    assert "source predictability" in r.stdout


def test_occlusion_hides_the_lungs_with_the_mean_of_the_rest():
    img = np.full((1, 50, 50), 200, np.uint8)
    img[0, :5, :] = 10
    out = occlude(img, "lungs")
    x0, y0, x1, y1 = (round(v * 50) for v in LUNG_BOX)
    kept = np.ones((50, 50), bool)
    kept[y0:y1, x0:x1] = False
    assert (out[0, y0:y1, x0:x1] == round(img[0][kept].mean())).all()
    assert (out[0][kept] == img[0][kept]).all()
    border = occlude(img, "border")
    assert border[0, 25, 25] != 200 and border[0, 0, 0] == 10


def test_leakage_finds_a_patient_in_two_splits_and_a_repeated_image():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (4, 32, 32), dtype=np.uint8)
    images[3] = images[0]
    index = [
        {"source": "s", "patient_id": p, "filename": f"{i}.png", "split": sp}
        for i, (p, sp) in enumerate([("1", "train"), ("1", "test"), ("2", "train"), ("3", "test")])
    ]
    r = leakage(index, images)
    assert r["verdict"] == "fail" and r["patients_in_two_splits"] == 1 and r["exact_duplicates_across_splits"] == 1


def test_population_flags_a_label_that_is_all_children():
    index = [{"label": "normal", "age": "6", "view": "PA"}] * 10 + [
        {"label": "COVID-19", "age": "60", "view": "PA"}
    ] * 10
    r = population(index)
    assert r["verdict"] == "fail" and any("paediatric" in f and "normal" in f for f in r["flags"])


def test_audit_of_something_that_is_not_a_dataset_is_one_line(tmp_path):
    (tmp_path / "x").mkdir()
    r = covidnet("audit", "--checkpoint", str(tmp_path / "none.pt"), "--data", str(tmp_path / "x"))
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


@pytest.mark.slow
def test_leave_one_source_out_retrains_without_each_mixed_source(tmp_path):
    a = write_phantom_dataset(tmp_path / "a", SynthConfig(n=60, seed=21, size=64, hospitals=1), progress=False)
    b = write_phantom_dataset(tmp_path / "b", SynthConfig(n=60, seed=22, size=64, hospitals=1), progress=False)
    build_dataset(
        BuildConfig(
            sources=[SourceSpec("cohen", a, "hosp-a"), SourceSpec("cohen", b, "hosp-b")],
            out=tmp_path / "ds",
            size=32,
            val_fraction=0.2,
            test_fraction=0.2,
            workers=1,
            progress=False,
        )
    )
    train(
        TrainConfig(
            data=str(tmp_path / "ds"), out=str(tmp_path / "run"), epochs=1, lr=3e-4, progress=False, precise_bn=32
        )
    )
    r = run_audit(str(tmp_path / "run" / "best.pt"), str(tmp_path / "ds"), loso_epochs=1)["tests"][
        "leave_one_source_out"
    ]
    assert set(r["per_source"]) == {"hosp-a", "hosp-b"} and r["verdict"] in ("ok", "warning", "fail")
    for s in r["per_source"].values():
        assert 0 <= s["external_balanced_accuracy"] <= 1 and 0 <= s["internal_balanced_accuracy"] <= 1
    assert not any(tmp_path.glob("**/without-*"))  # derived datasets are temporary
    skipped = run_audit(str(tmp_path / "run" / "best.pt"), str(tmp_path / "ds"))["tests"]["leave_one_source_out"]
    assert skipped["verdict"] == "skipped" and "--loso-epochs" in skipped["reason"]
