import json

import pytest
from test_cli import covidnet


@pytest.mark.slow
def test_demo_runs_the_whole_chain_and_beats_chance(tmp_path):
    r = covidnet("demo", "--out", str(tmp_path / "demo"), "--quiet")
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads((tmp_path / "demo" / "report" / "metrics.json").read_text())
    assert m["accuracy"]["value"] > 0.5  # chance is 1/3
    assert "accuracy" in r.stdout and "report:" in r.stdout
    assert (tmp_path / "demo" / "report" / "index.html").exists()
    # step 5: severity against the generator's known truth (the training mean would give R² <= 0)
    sev = json.loads((tmp_path / "demo" / "severity_report" / "metrics.json").read_text())
    assert sev["task"] == "severity" and sev["n"] >= 30
    for score in ("geographic", "opacity"):
        assert sev[score]["r2"]["value"] > 0.3, sev[score]
        assert sev[score]["spearman"]["value"] > 0.5, sev[score]
    assert "severity against the phantoms' true extent" in r.stdout and "geographic extent" in r.stdout
    assert (tmp_path / "demo" / "severity_report" / "severity_scatter.png").exists()
    assert (tmp_path / "demo" / "phantom_severity.csv").exists()
    again = covidnet("demo", "--out", str(tmp_path / "demo"), "--quiet")
    assert again.returncode == 1 and "--overwrite" in again.stderr
