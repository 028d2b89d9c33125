"""The shortcut audit: known answers on phantom data with and without a planted source signature,
and the parts on their own."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from test_cli import covidnet

from covidnet.audit import LUNG_BOX, LUNG_MARGIN, AuditConfig, LungFields, leakage, occlude, population, run_audit
from covidnet.data.build import BuildConfig, SourceSpec, build_dataset
from covidnet.data.lungmasks import MaskSpec, lung_field
from covidnet.data.synth import SynthConfig, write_phantom_dataset
from covidnet.train import TrainConfig, train


def build_hospitals(root: Path, out: Path, lung_masks: bool = False, size: int = 64) -> None:
    """The dataset of the two phantom hospitals in ``root`` (``hospitals``), stored at ``size``; with
    ``lung_masks``, joined to their true lung masks."""
    masks = [MaskSpec(f"truth-{h}", root / h / "lungmasks") for h in "ab"] if lung_masks else []
    build_dataset(
        BuildConfig(
            sources=[SourceSpec("cohen", root / "a", "hosp-a"), SourceSpec("cohen", root / "b", "hosp-b")],
            lung_masks=masks,
            out=out,
            size=size,
            val_fraction=0.15,
            test_fraction=0.25,
            workers=1,
            progress=False,
        )
    )


B_MIX = {"COVID-19": 0.1, "normal": 0.45, "pneumonia": 0.45}


def hospitals(
    root: Path, shortcut: str | None, size: int = 64, lung_masks: bool = False, b_mix: dict | None = None
) -> Path:
    """Two phantom hospitals as two sources, the shape of COVIDx's confounding: A sends the COVID-19
    cases, B mostly controls (and a few COVID-19 cases).

    With ``shortcut``, A's images carry a burnt-in marker and their label follows the hospital, not
    the image (they are drawn without disease): the marker is then the only way to classify them, so a
    model must use it — the known answer the audit has to find. Without, A's COVID-19 images show the
    disease and carry nothing else. ``b_mix``: B's classes (default ``B_MIX``)."""
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
    write_phantom_dataset(
        root / "b",
        SynthConfig(n=150, seed=12, size=128, hospitals=1, class_mix=b_mix or B_MIX),
        progress=False,
    )
    build_hospitals(root, root / "ds", lung_masks, size)
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
    a = run_audit(AuditConfig(str(with_marker / "run" / "best.pt"), str(with_marker / "ds")))
    sp = a["tests"]["source_predictability"]
    assert sp["verdict"] == "fail" and sp["worst_label"] == "COVID-19"
    assert sp["features_balanced_accuracy"] > 0.8
    oc = a["tests"]["occlusion"]
    assert oc["verdict"] == "fail" and oc["auc"]["lungs"] >= 0.7  # it classifies without the lungs


@pytest.mark.slow
def test_without_a_signature_source_predictability_does_not_fail(without):
    a = run_audit(AuditConfig(str(without / "run" / "best.pt"), str(without / "ds")))
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
        "attention inside the lungs",
        "leakage",
        "population confounders",
    ]
    at = a["tests"]["attention_inside_lungs"]  # built without lung masks: skipped, and the reports say so
    assert at["verdict"] == "skipped" and "--lung-masks" in at["reason"]
    assert a["tests"]["occlusion"]["lungs"]["lung_fields"] == "box" and "fixed central box" in oc["reading"]


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
    r = run_audit(AuditConfig(str(tmp_path / "run" / "best.pt"), str(tmp_path / "ds"), loso_epochs=1))["tests"][
        "leave_one_source_out"
    ]
    assert set(r["per_source"]) == {"hosp-a", "hosp-b"} and r["verdict"] in ("ok", "warning", "fail")
    for s in r["per_source"].values():
        assert 0 <= s["external_balanced_accuracy"] <= 1 and 0 <= s["internal_balanced_accuracy"] <= 1
    assert not any(tmp_path.glob("**/without-*"))  # derived datasets are temporary
    skipped = run_audit(AuditConfig(str(tmp_path / "run" / "best.pt"), str(tmp_path / "ds")))["tests"][
        "leave_one_source_out"
    ]
    assert skipped["verdict"] == "skipped" and "--loso-epochs" in skipped["reason"]


def test_lung_field_is_scipys_square_dilation_of_lung_and_ignore():
    from scipy import ndimage

    rng = np.random.default_rng(0)
    masks = rng.choice(np.array([0, 127, 255], np.uint8), size=(3, 40, 40), p=[0.97, 0.01, 0.02])
    r = round(LUNG_MARGIN * 40)
    want = np.stack([ndimage.binary_dilation(m >= 127, structure=np.ones((2 * r + 1,) * 2, bool)) for m in masks])
    assert r > 0 and np.array_equal(lung_field(masks, LUNG_MARGIN), want)


def test_occlusion_of_given_lung_regions_fills_them_with_the_mean_of_the_rest():
    img = np.arange(2 * 20 * 20, dtype=np.uint8).reshape(2, 20, 20) % 200
    hide = np.zeros((2, 20, 20), bool)
    hide[0, 5:9, 3:7] = True
    hide[1, 10:, :] = True
    out = occlude(img, "lungs", hide)
    for k in range(2):
        assert np.all(out[k][hide[k]] == np.round(img[k][~hide[k]].mean()))
        assert np.array_equal(out[k][~hide[k]], img[k][~hide[k]])


@pytest.mark.slow
def test_with_lung_masks_the_audit_hides_them_and_measures_attention_inside(without, tmp_path):
    """The same phantoms built again with their true lung masks: occlusion hides each image's dilated mask,
    and the attention test reports every source x class group with an interval, and draws its figure."""
    build_hospitals(without, tmp_path / "ds", lung_masks=True)
    a = run_audit(AuditConfig(str(without / "run" / "best.pt"), str(tmp_path / "ds"), report=str(tmp_path / "rep")))
    oc, at = a["tests"]["occlusion"], a["tests"]["attention_inside_lungs"]
    n_test = oc["n"]
    assert oc["lungs"]["lung_fields"] == "masks" and oc["lungs"]["annotated_masks"] == n_test
    assert "each image's mask" in oc["reading"]
    assert at["verdict"] in ("ok", "warning", "fail") and {g["source"] for g in at["groups"]} == {"hosp-a", "hosp-b"}
    assert sum(g["images"] for g in at["groups"]) == n_test
    for g in at["groups"]:
        assert 0 <= g["share"]["value"] <= 1 and 0 < g["lung_area"] < 1
    assert (tmp_path / "rep" / "attention.png").stat().st_size > 10_000
    assert "attention.png" in (tmp_path / "rep" / "index.html").read_text()


@pytest.fixture(scope="module")
def marker_128(tmp_path_factory):
    return hospitals(tmp_path_factory.mktemp("marker128"), "marker", size=128, lung_masks=True)


@pytest.fixture(scope="module")
def clean_128(tmp_path_factory):
    return hospitals(
        tmp_path_factory.mktemp("clean128"), None, size=128, lung_masks=True, b_mix={"COVID-19": 0.1, "normal": 0.9}
    )


@pytest.mark.slow
def test_attention_inside_the_lungs_fails_a_marker_reader_and_not_a_disease_reader(marker_128, clean_128):
    """The known answer, at 128 px (a 4 x 4 CAM; at 64 px it is 2 x 2 and places nothing). With hospital
    A's COVID-19 label carried only by a burnt-in marker outside the lungs, A's COVID-19 maps put less mass
    on the lungs than a blind map (measured: 0.31 in lungs covering 0.45, excess -0.14 (-0.16 to -0.12)):
    fail, on that group. Trained on the disease, with B's controls normal (measured: excesses +0.06 and
    +0.04, both intervals above 0): no fail, and every judged group's excess is above the marker group's
    upper bound. Without pneumonia in B: trained with them, the clean model's maps of B's lobar
    pneumonias put 0.41 of their mass in lungs covering 0.47 (excess -0.06 at 128 px; a consolidation
    effaces the heart border, outside the masks, which may be what it reads), so that fixture is not a
    clean answer for this test."""
    marked = run_audit(AuditConfig(str(marker_128 / "run" / "best.pt"), str(marker_128 / "ds")))["tests"][
        "attention_inside_lungs"
    ]
    assert marked["verdict"] == "fail"
    assert (marked["worst"]["source"], marked["worst"]["class"]) == ("hosp-a", "COVID-19")
    assert marked["worst"]["excess"]["ci95"][1] < -0.05
    clean = run_audit(AuditConfig(str(clean_128 / "run" / "best.pt"), str(clean_128 / "ds")))["tests"][
        "attention_inside_lungs"
    ]
    assert clean["verdict"] != "fail"
    judged = [g for g in clean["groups"] if g["images"] >= clean["min_images"]]
    assert {(g["source"], g["class"]) for g in judged} == {("hosp-a", "COVID-19"), ("hosp-b", "normal")}
    assert min(g["excess"]["value"] for g in judged) > marked["worst"]["excess"]["ci95"][1] + 0.05


def test_lung_fields_fall_back_to_the_box_for_rows_without_a_mask(tmp_path):
    from covidnet.audit import box_region
    from covidnet.data.store import open_store

    ph = write_phantom_dataset(tmp_path / "ph", SynthConfig(n=12, seed=3, size=64), progress=False)
    for f in sorted((ph / "lungmasks").iterdir())[:5]:
        f.unlink()  # five images without an annotation
    build_dataset(
        BuildConfig(
            sources=[SourceSpec("cohen", ph, "cohen")],
            lung_masks=[MaskSpec("truth", ph / "lungmasks")],
            out=tmp_path / "ds",
            size=32,
            workers=1,
            progress=False,
        )
    )
    store = open_store(tmp_path / "ds")
    rows = np.arange(len(store.index))
    lf = LungFields(store, rows)
    assert 0 < lf.has.sum() < len(rows) and lf.describe()["lung_fields"] == "masks and box"
    regions = lf.regions(np.arange(len(rows)))
    for k in np.flatnonzero(~lf.has):
        assert np.array_equal(regions[k], box_region(32))
    for k in np.flatnonzero(lf.has):
        assert np.array_equal(regions[k], lung_field(store.read_masks(rows[[k]]), LUNG_MARGIN)[0])
