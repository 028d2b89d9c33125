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
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

sys.path.insert(0, str(Path(__file__).resolve().parent))  # mutate.py, beside this file
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/dicomfiles.py

COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.register_profile("ci", max_examples=40, derandomize=True, database=None, print_blob=True, **COMMON)
settings.register_profile("long", max_examples=2000, derandomize=False, database=None, print_blob=True, **COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

HANG_S = float(os.environ.get("COVIDNET_PROPERTY_HANG_S", "600"))  # one property, all its examples


@pytest.fixture(autouse=True)
def _no_hang():
    """A property that runs past HANG_S (a decoder in an endless loop) dumps every thread's stack and
    ends the run, rather than holding CI until its own time limit."""
    faulthandler.dump_traceback_later(HANG_S, exit=True, file=sys.__stderr__)
    yield
    faulthandler.cancel_dump_traceback_later()
