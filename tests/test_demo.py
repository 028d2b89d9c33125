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
    again = covidnet("demo", "--out", str(tmp_path / "demo"), "--quiet")
    assert again.returncode == 1 and "--overwrite" in again.stderr
