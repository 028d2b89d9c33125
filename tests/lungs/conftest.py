"""What the lung tests share: a segmenter trained once per session on phantoms with their true lungs."""

import pytest
from lungphantoms import FAST, phantom_build

from covidnet.train import TrainConfig, train


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """48 phantoms at 64 px with their true lungs, and a lung-unet-tiny trained on them for 10 epochs."""
    root = tmp_path_factory.mktemp("lungs")
    ds = phantom_build(root, n=48)
    train(TrainConfig(data=str(ds), out=str(root / "run"), **FAST))
    return ds, root / "run" / "best.pt"
