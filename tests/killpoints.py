"""What the fault tests' drivers share: a driver is a script that runs ``covidnet ARGS`` (``covidnet.cli.main``)
in a subprocess and kills its own process (SIGKILL) at the point ``$KILL_AT`` names, the same point on every
run, so each test is deterministic. ``driver(doc, hooks)`` writes one: its docstring, the kill-point state,
the ``os.replace`` hook both share, the file's own hooks, then ``main``."""

from __future__ import annotations

import subprocess

PRELUDE = r"""
import os, signal, sys

kind, *arg = (os.environ.get("KILL_AT") or "none").split(":")
die = lambda: os.kill(os.getpid(), signal.SIGKILL)
count = [0]

if kind in ("replace", "before"):  # just after / before the N-th os.replace onto a name starting with arg[0]
    real_replace = os.replace

    def replace(src, dst, *a, **k):
        hit = os.path.basename(os.fspath(dst)).startswith(arg[0])
        if hit:
            count[0] += 1
        if hit and kind == "before" and count[0] == int(arg[1]):
            die()
        real_replace(src, dst, *a, **k)
        if hit and kind == "replace" and count[0] == int(arg[1]):
            die()

    os.replace = replace
"""

MAIN = r"""
from covidnet.cli import main

sys.exit(main(sys.argv[1:]))
"""


def driver(doc: str, hooks: str) -> str:
    """The driver script: ``doc`` (its kill points), the shared state and ``os.replace`` hook, ``hooks``."""
    return f'"""{doc}"""\n{PRELUDE}\n{hooks}\n{MAIN}'


def killed(r: subprocess.CompletedProcess) -> None:
    assert r.returncode == -9, f"expected SIGKILL, got {r.returncode}: {r.stderr[-2000:]}"
