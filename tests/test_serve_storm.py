"""The service under a storm of mutated uploads (scripts/serve_storm.py, in its CI size), and what the storm
found. A real `covidnet serve` on loopback in both."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
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


def test_a_client_that_hangs_up_mid_body_leaves_one_log_line_not_a_traceback(server):
    """Found by the storm: a client that sends less than its Content-Length and closes made request.stream()
    raise starlette's ClientDisconnect out of the route: 'Exception in ASGI application' and a traceback in the
    log for each such request (297 in the 5,000-request storm)."""
    before = len(server.logs())
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(
            b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\n"
            b"Content-Type: image/png\r\nContent-Length: 100000\r\n\r\n\x89PNG\r\n"
        )
    deadline = time.time() + 20
    while time.time() < deadline and "POST /v1/predict 400" not in server.logs()[before:]:
        time.sleep(0.2)
    new = server.logs()[before:]
    assert "POST /v1/predict 400" in new and "Traceback" not in new and "ClientDisconnect" not in new, new
    assert server.alive()
