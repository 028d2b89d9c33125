"""Fixtures of tests/deploy (a plugin of tests/conftest.py): a checkpoint trained here on phantoms, its
ONNX exports, and a running `covidnet serve`, shared by the export, predict --onnx, service and web-page
tests."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from phantomdata import trained_checkpoint

from covidnet.export import ExportConfig, export_model


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("deploy")
    return root, *trained_checkpoint(root, size=48, seed=7)


@pytest.fixture(scope="session")
def exported(trained):
    root, ds, ckpt = trained
    fp32 = export_model(ExportConfig(str(ckpt), str(root / "model.onnx"), data=str(ds), quiet=True))
    (root / "q").mkdir()
    int8 = export_model(ExportConfig(str(ckpt), str(root / "q" / "model.onnx"), int8=True, data=str(ds), quiet=True))
    return fp32, int8


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`covidnet serve` in a subprocess on a free loopback port; its log is kept for the tests to read."""

    def __init__(self, tmp: Path, *args: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp / f"serve-{self.port}.log"
        exe = Path(sys.executable).parent / "covidnet"
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [str(exe), "serve", "--port", str(self.port), *args],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "OMP_NUM_THREADS": "2"},
        )
        deadline = time.time() + 90
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"covidnet serve exited: {self.log_path.read_text()}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=2) as r:
                    if json.load(r)["status"] == "ok":
                        return
            except OSError:
                time.sleep(0.3)
        self.close()
        raise RuntimeError(f"covidnet serve did not start: {self.log_path.read_text()}")

    def alive(self) -> bool:
        with urllib.request.urlopen(self.url + "/healthz", timeout=5) as r:
            return self.proc.poll() is None and r.status == 200

    def logs(self) -> str:
        self.log.flush()
        return self.log_path.read_text()

    def close(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


@pytest.fixture(scope="session")
def server(trained, tmp_path_factory):
    root, ds, ckpt = trained
    s = Server(
        tmp_path_factory.mktemp("serve"),
        "--checkpoint",
        str(ckpt),
        "--token",
        "s3cret",
        "--max-upload-mb",
        "1",
        "--threshold",
        "COVID-19=0.5",
        "--max-batch",
        "8",
    )
    yield s
    s.close()
