"""The HTML evaluation report: files, numbers as written, escaping, strict JSON, and the page in a real browser."""

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from covidnet import DISCLAIMER
from covidnet.files import write_json
from covidnet.metrics.calibration import reliability_bins
from covidnet.report import write_report

CLASSES = ["normal", "pneumonia", "COVID-19"]
EVIL = "<script>alert(1)</script>"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _data(n: int = 60, seed: int = 0, classes_present=(0, 1, 2)):
    """Labels, patients, sources and Dirichlet probabilities skewed toward the true class (about 80 % right)."""
    rng = np.random.default_rng(seed)
    y = rng.choice(np.asarray(classes_present), size=n)
    alpha = np.ones((n, 3)) + 2.0 * np.eye(3)[y]
    probs = np.stack([rng.dirichlet(a) for a in alpha])
    patients = rng.integers(0, n * 2 // 3, size=n)
    sources = np.where(rng.random(n) < 0.5, "cohen", EVIL)
    return y, probs, patients, sources


def _block(y: np.ndarray, probs: np.ndarray, patients: np.ndarray, resamples: int = 100) -> dict:
    """Metrics in the evaluation's layout, with a small patient-level bootstrap, as the evaluation would write them."""
    from sklearn.metrics import confusion_matrix, roc_auc_score

    def point(y, p):
        pred = p.argmax(1)
        cm = confusion_matrix(y, pred, labels=[0, 1, 2])
        out = {"accuracy": float((pred == y).mean())}
        for k, c in enumerate(CLASSES):
            tp, fn, fp = cm[k, k], cm[k].sum() - cm[k, k], cm[:, k].sum() - cm[k, k]
            tn = cm.sum() - tp - fn - fp
            sens = tp / (tp + fn) if tp + fn else math.nan
            ppv = tp / (tp + fp) if tp + fp else math.nan
            pos = y == k
            out[c] = {
                "sensitivity": sens,
                "ppv": ppv,
                "specificity": tn / (tn + fp) if tn + fp else math.nan,
                "f1": 2 * sens * ppv / (sens + ppv) if sens + ppv > 0 else math.nan,
                "auc": roc_auc_score(pos, p[:, k]) if 0 < pos.sum() < len(y) else math.nan,
            }
        return out, cm

    est, cm = point(y, probs)
    rng = np.random.default_rng(1)
    ids = np.unique(patients)
    boots = []
    for _ in range(resamples):
        rows = np.concatenate([np.flatnonzero(patients == i) for i in rng.choice(ids, len(ids))])
        boots.append(point(y[rows], probs[rows])[0])

    def stat(value, get):
        v = np.array([get(b) for b in boots], dtype=float)
        v = v[np.isfinite(v)]
        ci = [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] if len(v) and np.isfinite(value) else None
        return {"value": float(value), "ci95": ci}

    keys = ("sensitivity", "ppv", "specificity", "f1", "auc")
    macro_of = lambda d, key: (
        float(np.nanmean([d[c][key] for c in CLASSES])) if any(np.isfinite(d[c][key]) for c in CLASSES) else math.nan
    )
    return {
        "n": int(len(y)),
        "n_patients": int(len(ids)),
        "accuracy": stat(est["accuracy"], lambda b: b["accuracy"]),
        "macro": {key: stat(macro_of(est, key), lambda b, key=key: macro_of(b, key)) for key in keys},
        "per_class": {c: {key: stat(est[c][key], lambda b, c=c, key=key: b[c][key]) for key in keys} for c in CLASSES},
        "confusion_matrix": {"labels": CLASSES, "matrix": cm.tolist()},
        "ece": reliability_bins(y, probs)[3],
    }


def _metrics(y, probs, patients, sources) -> dict:
    m = _block(y, probs, patients)
    m["temperature"] = 1.37
    m["per_source"] = {
        s: _block(y[sources == s], probs[sources == s], patients[sources == s], 30)
        for s in dict.fromkeys(sources.tolist())
    }
    m["bootstrap"] = {"resamples": 100, "unit": "patient"}
    return m


def _errors(y, probs, k: int = 6) -> list[dict]:
    pred = probs.argmax(1)
    wrong = np.flatnonzero(pred != y)
    wrong = wrong[np.argsort(-probs[wrong].max(1))][:k]
    yy, xx = np.mgrid[0:96, 0:96]
    out = []
    for j, i in enumerate(wrong):
        img = (60 + 120 * np.exp(-((xx - 48) ** 2 / 900 + (yy - 50) ** 2 / 1600))).astype(np.uint8)
        heat = np.exp(-((xx - 30 - 6 * j) ** 2 + (yy - 40) ** 2) / 300)
        overlay = np.stack([img * (1 - heat) + 255 * heat, img * (1 - heat), img * (1 - heat)], -1).astype(np.uint8)
        out.append(
            {
                "name": f"patient{i:03d}_$1_a_rather_long_file_name.png",
                "true": CLASSES[y[i]],
                "pred": CLASSES[pred[i]],
                "confidence": float(probs[i].max()),
                "image": img,
                "overlay": overlay if j % 2 == 0 else None,
            }
        )
    return out


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    y, probs, patients, sources = _data()
    m = _metrics(y, probs, patients, sources)
    out = tmp_path_factory.mktemp("report")
    (out / "notes.txt").write_text("mine")
    context = {"checkpoint": "runs/cxr3b/best.pt", "data": "data/covidx", "split": "test", "version": "0.1.0"}
    index = write_report(
        out, m, y, probs, CLASSES, errors=_errors(y, probs), title="covidnet evaluation: test split", context=context
    )
    return index, m


def _png(path: Path, min_bytes: int = 10_000) -> tuple[int, int]:
    assert path.stat().st_size > min_bytes, path
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.verify()
    with Image.open(path) as im:
        return im.size


def test_writes_the_page_and_its_figures_and_leaves_other_files_alone(report):
    index, _ = report
    out = index.parent
    assert index.name == "index.html"
    for name in ("confusion_matrix.png", "roc.png", "reliability.png", "errors.png"):
        w, h = _png(out / name)
        assert w >= 300 and h >= 300
    assert (out / "notes.txt").read_text() == "mine"
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "temporary files left behind"


def test_page_shows_the_numbers_classes_and_disclaimer_and_is_self_contained(report):
    index, m = report
    page = index.read_text(encoding="utf-8")
    acc = m["accuracy"]
    text = f"{acc['value']:.3f} ({acc['ci95'][0]:.3f}–{acc['ci95'][1]:.3f})"
    assert text in page
    sens = m["per_class"]["COVID-19"]["sensitivity"]
    assert f"{sens['value']:.3f} ({sens['ci95'][0]:.3f}–{sens['ci95'][1]:.3f})" in page
    assert all(f">{c}<" in page for c in CLASSES)
    assert DISCLAIMER in page and "not for diagnostic use." in page
    assert "1.370" in page and "runs/cxr3b/best.pt" in page
    for name, id in [
        ("confusion_matrix.png", "confusion-matrix"),
        ("roc.png", "roc"),
        ("reliability.png", "reliability"),
        ("errors.png", "errors"),
    ]:
        assert re.search(rf'<img id="{id}" src="{re.escape(name)}" alt="[^"]+"', page), name
    assert page.index(text) < page.index('id="confusion-matrix"')  # numbers first, figures after
    assert "http://" not in page and "https://" not in page and "<script" not in page.replace(EVIL, "")


def test_data_strings_are_escaped(report):
    index, _ = report
    page = index.read_text(encoding="utf-8")
    assert EVIL not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script" not in page


def test_nan_auc_and_absent_class_render_as_a_dash_and_no_errors_is_a_sentence(tmp_path):
    y, probs, patients, sources = _data(40, seed=3, classes_present=(0, 1))  # no COVID-19 at all
    m = _metrics(y, probs, patients, sources)
    assert math.isnan(m["per_class"]["COVID-19"]["auc"]["value"])
    m["temperature"] = None
    del m["per_source"]
    (tmp_path / "errors.png").write_bytes(b"an earlier report's")
    index = write_report(tmp_path, m, y, probs, CLASSES)
    page = index.read_text(encoding="utf-8")
    row = re.search(r'<table id="per-class">.*?<th scope="row">COVID-19</th>(.*?)</tr>', page, re.S).group(1)
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row)
    assert cells[0] == "0"  # images of the class
    assert cells[-1] == "—"  # AUC
    assert "nan" not in page.lower() and "None" not in page
    assert re.search(r"<th scope=\"row\">Temperature</th><td[^>]*>—</td>", page)
    assert not (tmp_path / "errors.png").exists()
    assert 'id="no-errors"' in page and "No misclassified images" in page and "errors.png" not in page
    assert "Per source" not in page
    _png(tmp_path / "roc.png")


def test_write_json_is_strict_json_with_nan_as_null(tmp_path):
    y, probs, patients, sources = _data()
    m = _metrics(y, probs, patients, sources)
    m["per_class"]["COVID-19"]["auc"] = {"value": float("nan"), "ci95": None}
    m["macro"]["auc"]["ci95"] = [np.float64("nan"), np.float32(0.9)]
    m["n"] = np.int64(60)
    path = write_json(tmp_path / "sub" / "metrics.json", m)
    text = path.read_text(encoding="utf-8")
    strict = json.loads(text, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
    assert strict["per_class"]["COVID-19"]["auc"]["value"] is None
    assert strict["macro"]["auc"]["ci95"][0] is None and strict["macro"]["auc"]["ci95"][1] == pytest.approx(0.9)
    assert strict["n"] == 60 and strict["per_class"]["COVID-19"]["auc"]["ci95"] is None
    assert EVIL in strict["per_source"]
    assert [p.name for p in path.parent.iterdir()] == ["metrics.json"]


def test_rewriting_replaces_the_report_and_wrong_shapes_are_refused(tmp_path):
    import matplotlib

    backend = matplotlib.rcParams["backend"]
    y, probs, patients, sources = _data(30, seed=5)
    m = _block(y, probs, patients, 20)
    write_report(tmp_path, m, y, probs, CLASSES, title="first")
    write_report(tmp_path, m, y, probs, CLASSES, title="second <b>")
    page = (tmp_path / "index.html").read_text(encoding="utf-8")
    assert "<title>second &lt;b&gt;</title>" in page and "first" not in page
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "confusion_matrix.png",
        "index.html",
        "reliability.png",
        "roc.png",
    ]
    assert matplotlib.rcParams["backend"] == backend
    with pytest.raises(ValueError, match="shape"):
        write_report(tmp_path / "x", m, y, probs[:, :2], CLASSES)
    with pytest.raises(ValueError, match="outside"):
        write_report(tmp_path / "x", m, y + 3, probs, CLASSES)


@pytest.mark.browser
def test_page_in_headless_chromium(report, tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not found")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    index, m = report
    acc = m["accuracy"]
    text = f"{acc['value']:.3f} ({acc['ci95'][0]:.3f}–{acc['ci95'][1]:.3f})"
    shot = tmp_path / "report.png"
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=20_000)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(index.resolve().as_uri(), wait_until="load", timeout=15_000)
            assert page.title() == "covidnet evaluation: test split"
            for id in ("confusion-matrix", "roc", "reliability", "errors"):
                assert page.eval_on_selector(f"#{id}", "img => img.complete && img.naturalWidth") > 0, id
            assert text in page.inner_text("#summary")
            assert DISCLAIMER in page.inner_text("#disclaimer")
            assert page.is_visible("#summary")  # on the first screen, without scrolling
            assert page.eval_on_selector("#summary", "t => t.getBoundingClientRect().bottom") < 900
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    _png(shot)
