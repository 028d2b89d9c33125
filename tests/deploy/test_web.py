"""The service's web page in a real browser (Debian's headless Chromium, driven by Playwright): upload an
X-ray, see the probabilities, the triage decision and the heat map appear."""

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from servefixtures import Server
from test_report import CHROMIUM, CHROMIUM_ARGS

from covidnet.predict import PredictConfig, predict_paths

ARTIFACTS = Path(os.environ.get("COVIDNET_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "test-artifacts"))


@pytest.mark.browser
def test_upload_on_the_page_shows_probabilities_triage_and_the_heat_map(trained, tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not found")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    root, _, ckpt = trained
    xray = tmp_path / "xray.png"
    Image.open(sorted((root / "phantoms" / "images").glob("*.png"))[3]).convert("L").save(xray)
    (expected,) = predict_paths(
        PredictConfig([str(xray)], checkpoint=str(ckpt), device="cpu", threshold="COVID-19=0.5")
    )
    s = Server(tmp_path, "--checkpoint", str(ckpt), "--threshold", "COVID-19=0.5", "--token", "pagetoken")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "serve-page.png"
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=20_000)
            try:
                page = browser.new_page(viewport={"width": 1200, "height": 800})
                page.goto(s.url + "/", wait_until="load", timeout=15_000)
                assert "Research tool, not a diagnosis" in page.inner_text("#disclaimer")
                page.wait_for_selector("#tokenbox.show", timeout=10_000)  # the service asked for its token
                page.fill("#token", "pagetoken")
                page.dispatch_event("#token", "change")
                page.wait_for_function(
                    "document.getElementById('model').textContent.includes('with heat maps')", timeout=10_000
                )
                page.set_input_files("#file", str(xray))
                page.wait_for_selector("#bars .bar", timeout=30_000)
                page.wait_for_function(
                    "(() => { const i = document.getElementById('shown'); "
                    "return i.complete && i.naturalWidth > 0 && i.dataset.kind === 'heatmap'; })()",
                    timeout=30_000,
                )
                bars = page.eval_on_selector_all(
                    "#bars .bar", "rows => rows.map(r => [r.dataset.class, r.querySelector('.fill').style.width])"
                )
                shown = {c: float(w.rstrip("%")) / 100 for c, w in bars}
                assert shown == pytest.approx(expected["probabilities"], abs=1e-3)
                triage = page.inner_text("#triage")
                assert ("FLAG" in triage) == expected["triage"]["flag"] and "COVID-19" in triage
                assert expected["label"] in page.inner_text("#status")
                assert page.eval_on_selector("#shown", "i => i.naturalWidth") == 48
                page.screenshot(path=str(shot), full_page=True)
            finally:
                browser.close()
    finally:
        s.close()
    assert np.array(Image.open(shot)).std() > 0  # a rendered page, kept as the test's artefact
