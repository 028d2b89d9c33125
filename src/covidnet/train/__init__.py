"""``covidnet train``: training of every task (``covidnet.tasks``) by one loop, from a laptop CPU to many GPUs.

* ``config``: ``TrainConfig``, every setting (the paper's recipe by default for classification);
* ``loop``: the loop, written once (stage, build, steps, end of epoch), and ``check_training``;
* ``run``: the run folder, its status, log, signals and resume checks;
* ``dist``: ``torchrun`` (one process or a group); ``sampler``: which images each step takes;
* ``feed``: where the staged arrays live (device, pinned host memory, or streamed from the store).
"""

from .config import TrainConfig
from .loop import check_training, train
from .run import TrainingInterrupted

__all__ = ["TrainConfig", "TrainingInterrupted", "check_training", "train"]
