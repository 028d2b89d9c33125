"""`covidnet eval`, `predict` and `calibrate` as a user runs them, on a checkpoint trained here."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from dicomfiles import dicom, save_dicom
from phantomdata import trained_checkpoint
from PIL import Image
from sklearn.metrics import accuracy_score, precision_score, recall_score, roc_auc_score
from test_cli import covidnet

from covidnet.checkpoint import read_checkpoint

CLASSES = ["normal", "pneumonia", "COVID-19"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalrun")
    return root, *trained_checkpoint(root, size=32, seed=5)


def same(ours, sklearn_value) -> bool:
    """JSON writes an undefined metric as null; scikit-learn gives NaN."""
    if ours is None:
        return np.isnan(sklearn_value)
    return ours == pytest.approx(sklearn_value)


def real_label_file(shared: Path, tmp: Path) -> tuple[Path, Path]:
    """The cohen and figure1 images that test_COVIDx3.txt names and ../shared/data has, as raw files in
    mixed formats (PNG, JPEG, WebP, DICOM) + a COVIDx label file naming them."""
    have = {p.stem: p for s in ("cohen", "figure1") for p in (shared / "sources" / s / "images").iterdir()}
    images = tmp / "raw"
    images.mkdir()
    lines = []
    for k, line in enumerate((shared / "covidx" / "test_COVIDx3.txt").read_text().splitlines()):
        parts = line.split()
        if len(parts) < 4 or Path(parts[1]).stem not in have:
            continue
        src = have[Path(parts[1]).stem]
        arr = np.array(Image.open(src).convert("L"))
        out = [f"{src.stem}.png", src.name, f"{src.stem}.webp", f"{src.stem}.dcm"][k % 4]
        if out.endswith(".dcm"):
            save_dicom(images / out, dicom(arr, ViewPosition="AP"))
        elif out == src.name:
            shutil.copy(src, images / out)
        else:
            Image.fromarray(arr).save(images / out)
        lines.append(f"{parts[0]} {out} {parts[2]} {parts[3]}")
    labels = tmp / "test_COVIDx3_subset.txt"
    labels.write_text("\n".join(lines) + "\n")
    return labels, images


def label_file_of_raw_images(root: Path, tmp: Path) -> tuple[Path, Path]:
    """The test split's phantom images as raw files in mixed formats (PNG, JPEG, WebP, DICOM) + a label file."""
    images = tmp / "raw"
    images.mkdir()
    lines = []
    for k, line in enumerate((root / "ds" / "test.txt").read_text().splitlines()):
        pid, name, label, source = line.split()
        arr = np.array(Image.open(root / "phantoms" / "images" / name).convert("L"))
        stem = Path(name).stem
        fmt = k % 4
        if fmt == 0:
            out = f"{stem}.png"
            Image.fromarray(arr).save(images / out)
        elif fmt == 1:
            out = f"{stem}.jpg"
            Image.fromarray(arr).save(images / out, quality=95)
        elif fmt == 2:
            out = f"{stem}.webp"
            Image.fromarray(arr).save(images / out, lossless=True)
        else:
            out = f"{stem}.dcm"
            save_dicom(images / out, dicom(arr, ViewPosition="PA"))
        lines.append(f"{pid} {out} {label} {source}")
    labels = tmp / "test_labels.txt"
    labels.write_text("\n".join(lines) + "\n")
    return labels, images


@pytest.mark.parametrize("images_from", ["phantoms", pytest.param("real", marks=pytest.mark.realdata)])
def test_eval_on_raw_mixed_format_images_matches_scikit_learn_on_predict_output(
    trained, tmp_path, images_from, request
):
    root, _, ckpt = trained
    if images_from == "real":
        labels, images = real_label_file(request.getfixturevalue("shared_data"), tmp_path)
    else:
        labels, images = label_file_of_raw_images(root, tmp_path)
    r = covidnet(
        "eval",
        "--checkpoint",
        str(ckpt),
        "--labels",
        str(labels),
        "--images",
        str(images),
        "--json",
        str(tmp_path / "m.json"),
        "--resamples",
        "100",
        "--quiet",
    )
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "m.json").read_text())
    assert {"n", "accuracy", "per_class", "confusion_matrix", "ece", "per_source"} <= set(m)
    assert set(m["per_class"]) == set(CLASSES) and m["failed_count"] == 0
    assert {".png", ".jpg", ".webp", ".dcm"} == {Path(l.split()[1]).suffix for l in labels.read_text().splitlines()}
    # the same images through `covidnet predict`: sklearn on its probabilities gives eval's numbers
    p = covidnet(
        "predict",
        "--checkpoint",
        str(ckpt),
        "--json",
        *[str(images / l.split()[1]) for l in labels.read_text().splitlines()],
    )
    preds = [json.loads(line) for line in p.stdout.splitlines()]
    truth = np.array([CLASSES.index(l.split()[2]) for l in labels.read_text().splitlines()])
    probs = np.array([[r["probabilities"][c] for c in CLASSES] for r in preds])
    y_pred = probs.argmax(1)
    assert m["accuracy"]["value"] == pytest.approx(accuracy_score(truth, y_pred))
    for c, name in enumerate(CLASSES):
        pc = m["per_class"][name]
        assert same(pc["sensitivity"]["value"], recall_score(truth == c, y_pred == c, zero_division=np.nan))
        assert same(pc["ppv"]["value"], precision_score(truth == c, y_pred == c, zero_division=np.nan))
        if 0 < (truth == c).sum() < len(truth):
            assert pc["auc"]["value"] == pytest.approx(roc_auc_score(truth == c, probs[:, c]), abs=1e-6)


def test_eval_and_training_validation_agree_exactly(trained, tmp_path):
    _, ds, ckpt = trained
    r = covidnet(
        "eval",
        "--checkpoint",
        str(ckpt),
        "--data",
        str(ds),
        "--split",
        "val",
        "--json",
        str(tmp_path / "v.json"),
        "--resamples",
        "0",
        "--quiet",
    )
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "v.json").read_text())
    logged = read_checkpoint(ckpt)["val_metrics"]
    assert m["accuracy"]["value"] == logged["accuracy"]
    for c in CLASSES:
        for ours, theirs in (("sensitivity", "sensitivity"), ("ppv", "ppv")):
            a, b = m["per_class"][c][ours]["value"], logged[theirs][c]
            assert (a is None and b != b) or a == b, (c, ours, a, b)


@pytest.mark.browser
def test_report_opens_in_a_real_browser(trained, tmp_path):
    pytest.importorskip("playwright")
    if not Path("/usr/bin/chromium").exists():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    _, ds, ckpt = trained
    r = covidnet(
        "eval",
        "--checkpoint",
        str(ckpt),
        "--data",
        str(ds),
        "--report",
        str(tmp_path / "rep"),
        "--resamples",
        "50",
        "--quiet",
    )
    assert r.returncode == 0, r.stderr
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        page = browser.new_page()
        page.goto((tmp_path / "rep" / "index.html").as_uri())
        assert page.eval_on_selector("#confusion-matrix", "img => img.complete && img.naturalWidth") > 0
        assert "not for diagnostic use" in page.content()
        browser.close()


@pytest.mark.parametrize(
    "content, needle",
    [
        ("p1 a.png normal cohen site PA extra\n", "3 to 6 columns"),
        ("p1 a.png influenza\n", "unknown label"),
        ("", "empty"),
        ("patient one a.png normal cohen\n", "a patient id or file name containing spaces?"),
        ("p1 a.png normal cohen site_a\np2 b.png normal cohen\n", "no site column, but line 1 has one"),
        ("p1 a.png normal cohen AP\n", "site column 'AP' is a view"),
    ],
)
def test_bad_label_files_stop_with_file_and_line(trained, tmp_path, content, needle):
    _, _, ckpt = trained
    (tmp_path / "l.txt").write_text(content)
    (tmp_path / "img").mkdir()
    r = covidnet(
        "eval", "--checkpoint", str(ckpt), "--labels", str(tmp_path / "l.txt"), "--images", str(tmp_path / "img")
    )
    assert r.returncode == 1 and needle in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_unreadable_missing_and_lateral_images_are_reported_and_the_rest_evaluated(trained, tmp_path):
    root, _, ckpt = trained
    labels, images = label_file_of_raw_images(root, tmp_path)
    lines = labels.read_text().splitlines()
    first = images / lines[0].split()[1]
    first.write_bytes(first.read_bytes()[:50])  # truncated
    (images / lines[1].split()[1]).unlink()  # missing
    dcm = next(l.split()[1] for l in lines if l.split()[1].endswith(".dcm"))
    save_dicom(images / dcm, dicom(np.zeros((32, 32), np.uint8), ViewPosition="LL"))  # a lateral view
    r = covidnet(
        "eval",
        "--checkpoint",
        str(ckpt),
        "--labels",
        str(labels),
        "--images",
        str(images),
        "--json",
        str(tmp_path / "m.json"),
        "--resamples",
        "0",
        "--quiet",
    )
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["failed_count"] == 3 and m["processed"] == len(lines) - 3
    assert f"{len(lines) - 3} images evaluated, 3 failed" in r.stdout
    errors = " ".join(f["error"] for f in m["failed"])
    assert "not found" in errors and "lateral view" in errors and first.name in errors


def test_predict_walks_folders_reports_failures_and_writes_heat_maps(trained, tmp_path):
    root, _, ckpt = trained
    folder = tmp_path / "in"
    shutil.copytree(root / "phantoms" / "images", folder)
    (folder / "broken.png").write_bytes(b"")
    (folder / "notes.png").write_text("not an image")
    n_images = len(list((root / "phantoms" / "images").iterdir()))
    r = covidnet(
        "predict",
        "--checkpoint",
        str(ckpt),
        str(folder),
        "--json",
        "--cam",
        str(tmp_path / "cams"),
        "--threshold",
        "COVID-19=0.2",
    )
    assert r.returncode == 0, r.stderr
    out = [json.loads(l) for l in r.stdout.splitlines()]
    ok = [o for o in out if o["status"] == "ok"]
    bad = [o for o in out if o["status"] == "failed"]
    assert len(ok) == n_images and {Path(b["path"]).name for b in bad} == {"broken.png", "notes.png"}
    assert all(abs(sum(o["probabilities"].values()) - 1) < 1e-4 for o in ok)
    assert all(o["triage"]["flag"] == (o["probabilities"]["COVID-19"] >= 0.2) for o in ok)
    assert len(list((tmp_path / "cams").glob("*.png"))) == n_images
    assert f"{n_images} images processed, 2 failed" in r.stderr


def test_calibrate_stores_temperature_and_operating_point_that_predict_uses(trained, tmp_path):
    _, ds, ckpt = trained
    own = tmp_path / "best.pt"
    shutil.copy(ckpt, own)
    r = covidnet(
        "calibrate",
        "--checkpoint",
        str(own),
        "--data",
        str(ds),
        "--temperature",
        "--operating-point",
        "sensitivity=0.9",
    )
    assert r.returncode == 0, r.stderr
    c = read_checkpoint(own)
    assert c["temperature"] > 0 and c["operating_point"]["class"] == "COVID-19"
    img = next((ds.parent / "phantoms" / "images").iterdir())
    p = json.loads(covidnet("predict", "--checkpoint", str(own), "--json", str(img)).stdout)
    assert p["triage"]["threshold"] == c["operating_point"]["threshold"] and "operating point" in p["triage"]["rule"]
    named = json.loads(
        covidnet("predict", "--checkpoint", str(own), "--json", "--operating-point", "sensitivity=0.9", str(img)).stdout
    )
    assert named["triage"]["threshold"] == c["operating_point"]["threshold"]
    other = covidnet("predict", "--checkpoint", str(own), "--operating-point", "sensitivity=0.99", str(img))
    assert other.returncode == 1 and "covidnet calibrate" in other.stderr


def test_missing_checkpoint_is_one_line(tmp_path):
    r = covidnet("predict", "--checkpoint", str(tmp_path / "none.pt"), str(tmp_path))
    assert r.returncode == 1 and "checkpoint not found" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_eval_gives_within_site_figures_from_the_store_and_from_a_label_files_site_and_view_columns(trained, tmp_path):
    root, ds, ckpt = trained
    r = covidnet(
        "eval", "--checkpoint", str(ckpt), "--data", str(ds), "--json", str(tmp_path / "store.json"),
        "--resamples", "20", "--quiet",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    from_store = json.loads((tmp_path / "store.json").read_text())["within_site"]
    assert "within site" in r.stdout and from_store["unknown_site"]["images"] == 0
    assert {p["site"] for p in from_store["pairs"]} <= {"Phantom Hospital A", "Phantom Hospital B"}
    assert from_store["pooled"]["site"]["all"]["image_pairs"] > 0
    # the same test films as raw files, with the site and view of the phantoms' metadata in the label file
    labels, images = label_file_of_raw_images(root, tmp_path)
    meta = {Path(m["filename"]).stem: m for m in csv.DictReader(open(root / "phantoms" / "metadata.csv"))}
    lines = []
    for line in labels.read_text().splitlines():
        m = meta[Path(line.split()[1]).stem]
        lines.append(f"{line} {m['location'].replace(' ', '_')} {m['view']}")
    labels.write_text("\n".join(lines) + "\n")
    r = covidnet(
        "eval", "--checkpoint", str(ckpt), "--labels", str(labels), "--images", str(images),
        "--json", str(tmp_path / "labels.json"), "--resamples", "20", "--quiet",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    from_labels = json.loads((tmp_path / "labels.json").read_text())["within_site"]
    for figure in ("site", "site_view", "view_alone"):  # the same films in the same strata: the same pairs
        assert from_labels["pooled"][figure]["all"]["image_pairs"] == from_store["pooled"][figure]["all"]["image_pairs"]
    assert [(p["site"], p["counts"]) for p in from_labels["pairs"]] == [
        (p["site"], p["counts"]) for p in from_store["pairs"]
    ]
