from pathlib import Path

import pytest
import torch

pytest_plugins = ["servefixtures"]  # the trained checkpoint, exports and server of tests/deploy

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (only developers' and CI's checkouts have it)")
    return SHARED_DATA
