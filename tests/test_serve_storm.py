"""The service under a storm of mutated uploads (scripts/serve_storm.py, in its CI size), and what the storm
found. A real `covidnet serve` on loopback in both."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_a_storm_of_mutated_uploads_gets_no_5xx_no_leak_and_leaves_the_server_up(trained, tmp_path):
    """200 mutated uploads of every format (declared dimensions, truncated and broken multipart bodies, hang-ups,
    oversized bodies among them), 8 at a time, on the deploy tests' checkpoint."""
    _, _, ckpt = trained
    out = tmp_path / "storm.json"
    r = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "serve_storm.py"), "--checkpoint", str(ckpt), "--n", "200"]
        + ["--work", str(tmp_path), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["requests"] == 200 and not figures["failures"]
    assert figures["server_errors_5xx"] == 0 and figures["marker_leaks_in_responses"] == 0
    assert figures["marker_leaks_in_log"] == 0 and figures["alive_at_end"]
    assert sum(sum(v.values()) for v in figures["by_kind"].values()) == 200
    assert figures["by_kind"]["valid"].get("200", 0) == sum(figures["by_kind"]["valid"].values())  # the control
    assert set(figures["by_kind"]) >= {"mutated", "dimensions", "truncated_multipart", "bad_multipart", "hangup"}


def test_a_multipart_type_without_a_boundary_is_400_not_500(server):
    """Found by the storm: python-multipart raises FormParserError('No boundary given') when the parser is
    made, which parse_upload did outside its try: an unhandled exception, a 500 and a traceback in the log."""
    r = httpx.post(
        server.url + "/v1/predict",
        content=b"--x\r\n\r\nabc\r\n--x--\r\n",
        headers={"Authorization": "Bearer s3cret", "Content-Type": "multipart/form-data"},
        timeout=30,
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_request", r.text
    assert "malformed multipart body" in r.json()["error"]["message"]
    assert server.alive()
