"""Hypothesis profiles of the property tests (tests/properties/), and what they share.

``ci`` (the default): a small budget per property, the whole folder in a minute or two on 2 cores;
derandomised (the examples are a function of the test, so CI is deterministic) and without an example
database. ``long`` (``HYPOTHESIS_PROFILE=long``): 50 times the examples, random, to run by hand; a
failure it finds is added as an ``@example`` (or a regression test) so that ``ci`` keeps checking it.
"""

from __future__ import annotations

import faulthandler
import os
import sys
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

sys.path.insert(0, str(Path(__file__).resolve().parent))  # mutate.py, beside this file
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/dicomfiles.py

COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.register_profile("ci", max_examples=40, derandomize=True, database=None, print_blob=True, **COMMON)
settings.register_profile("long", max_examples=2000, derandomize=False, database=None, print_blob=True, **COMMON)
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
settings.load_profile(PROFILE)

# a test's limit until its first example (each example then has its own, mutate.EXAMPLE_S, which replaces this
# one: faulthandler keeps one timer): a fixture that builds a store, seeds that do not decode
HANG_S = float(os.environ.get("COVIDNET_PROPERTY_HANG_S", "7200" if PROFILE == "long" else "600"))


@pytest.fixture(autouse=True)
def _no_hang():
    """A test that runs past HANG_S dumps every thread's stack and ends the run, rather than holding CI until
    its own time limit; tracemalloc, which ``mutate.bounded`` leaves on across a property's examples, is
    stopped after it."""
    faulthandler.dump_traceback_later(HANG_S, exit=True, file=sys.__stderr__)
    yield
    faulthandler.cancel_dump_traceback_later()
    if tracemalloc.is_tracing():
        tracemalloc.stop()
