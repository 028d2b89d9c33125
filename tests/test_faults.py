"""`covidnet train` killed with SIGKILL at chosen points (after an optimisation step, while a checkpoint is
being written, between two checkpoint writes, before the final status): what it leaves is either resumed
with ``--resume`` to exactly the weights of an uninterrupted run of the same seed, or refused with one line
that says what to do. The kill points are set by a small driver that runs the real command
(``covidnet.cli.main``) in a subprocess and kills its own process from inside torch's optimiser step hook,
``torch.save`` or ``os.replace``: the same points on every run, so the test is deterministic."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from killpoints import driver, killed

from covidnet.cli import main

DRIVER = driver(
    """covidnet ARGS, killed (SIGKILL, by itself) at $KILL_AT:
step:N               after this process's N-th optimisation step (every step is counted in $STEP_LOG)
save:N               half-way through writing the N-th torch.save (its temporary file left torn)
replace:NAME:N       just after the N-th os.replace onto a file whose name starts with NAME
before:NAME:N        just before it""",
    r"""
if kind in ("step", "none"):
    from torch.optim.optimizer import register_optimizer_step_post_hook

    def on_step(opt, args, kwargs):
        count[0] += 1
        if os.environ.get("STEP_LOG"):
            with open(os.environ["STEP_LOG"], "a") as f:
                f.write("step\n")
        if kind == "step" and count[0] == int(arg[0]):
            die()

    register_optimizer_step_post_hook(on_step)
elif kind == "save":
    import io, torch

    real_save = torch.save

    def save(obj, f, *a, **k):
        count[0] += 1
        if count[0] != int(arg[0]):
            return real_save(obj, f, *a, **k)
        buf = io.BytesIO()
        real_save(obj, buf, *a, **k)
        with open(f, "wb") as out:
            out.write(buf.getvalue()[: len(buf.getvalue()) // 2])
            out.flush()
            os.fsync(out.fileno())
        die()

    torch.save = save
""",
)

EPOCHS = 3
TRAIN = [
    *["--epochs", str(EPOCHS), "--batch-size", "4", "--lr", "3e-3", "--precise-bn", "8", "--seed", "5"],
    *["--device", "cpu", "--no-progress", "--compile", "off"],
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """30 phantoms built at 32 px (the CLI), the driver, and an uninterrupted run of the same seed."""
    root = tmp_path_factory.mktemp("faults")
    assert main(["data", "synth", "--out", str(root / "ph"), "--n", "30", "--size", "64", "--quiet"]) == 0
    build = ["data", "build", "--source", f"cohen={root / 'ph'}", "--out", str(root / "ds"), "--size", "32"]
    assert main([*build, "--workers", "1", "--quiet", "--val-fraction", "0.2", "--test-fraction", "0.2"]) == 0
    script = root / "driver.py"
    script.write_text(DRIVER)
    ref = root / "reference"
    r = train(root, script, ref, env={"STEP_LOG": str(root / "steps.log")})
    assert r.returncode == 0, r.stderr
    steps = len((root / "steps.log").read_text().splitlines())
    assert steps % EPOCHS == 0 and steps // EPOCHS >= 3, steps
    return root, script, ref, steps // EPOCHS


def train(
    root: Path, script: Path, out: Path, kill: str = "", resume: bool = False, env: dict | None = None
) -> subprocess.CompletedProcess:
    env = {**os.environ, "KILL_AT": kill, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **(env or {})}
    args = ["train", "--data", str(root / "ds"), "--out", str(out), *TRAIN, *(["--resume"] if resume else [])]
    return subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, timeout=600, env=env, cwd=root
    )


def same_weights(a: Path, b: Path) -> None:
    """Two checkpoints hold the same model, optimiser state, epoch and best validation figure, exactly."""
    x, y = (torch.load(p, map_location="cpu", weights_only=True) for p in (a, b))
    assert (x["epoch"], x["step"]) == (y["epoch"], y["step"])
    best = lambda c: c.get("best_score", c.get("best_val_loss"))  # noqa: E731 (best_val_loss: before train/)
    assert best(x) == best(y)
    assert x["model"].keys() == y["model"].keys()
    for k in x["model"]:
        assert torch.equal(x["model"][k], y["model"][k]), f"{a} and {b} differ in {k}"
    if x.get("optimizer"):
        for i, s in x["optimizer"]["state"].items():
            for k, v in s.items():
                assert torch.equal(torch.as_tensor(v), torch.as_tensor(y["optimizer"]["state"][i][k])), (i, k)


def epochs_logged(run: Path) -> list[int]:
    with open(run / "log.csv", newline="") as f:
        return [int(r["epoch"]) for r in csv.DictReader(f)]


def assert_like_reference(run: Path, ref: Path) -> None:
    same_weights(run / "last.pt", ref / "last.pt")
    same_weights(run / "best.pt", ref / "best.pt")
    assert json.loads((run / "run.json").read_text())["state"] == "complete"


@pytest.fixture(scope="module")
def chained(setup):
    """One run killed four times and resumed (or restarted) each time:
    1. after its first optimisation step (no checkpoint yet): --resume is refused with one line saying to
       start without it, and starting again is allowed;
    2. inside epoch 2 (epoch 1's last.pt and best.pt on disk);
    3. half-way through writing epoch 2's first checkpoint (best.pt where it improved, else last.pt: its
       temporary file torn, the old ones intact), after its log row;
    4. after the last checkpoint, just before run.json says complete;
    then resumed to its end."""
    root, script, ref, steps = setup  # steps: per epoch
    run = root / "run"

    killed(train(root, script, run, kill="step:1"))
    assert not (run / "last.pt").exists()
    r = train(root, script, run, resume=True)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    assert "nothing to resume" in lines[0] and "without --resume" in lines[0] and str(run) in lines[0]

    killed(train(root, script, run, kill=f"step:{steps + 2}"))  # restarted: epoch 1 done, killed inside epoch 2
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 1

    killed(train(root, script, run, kill="save:1", resume=True))  # the first save of this process: epoch 2's
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 1  # best.pt or last.pt; never replaced
    assert any(p.name.startswith((".last.pt.", ".best.pt.")) for p in run.iterdir())  # the torn temporary file

    killed(train(root, script, run, kill="before:run.json:2", resume=True))  # 1: running, 2: complete
    assert json.loads((run / "run.json").read_text())["state"] == "running"
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == EPOCHS

    r = train(root, script, run, resume=True)
    assert r.returncode == 0, r.stderr
    return run, ref


@pytest.mark.slow
def test_a_run_killed_at_each_point_resumes_to_the_weights_of_an_uninterrupted_run(chained):
    run, ref = chained
    assert_like_reference(run, ref)


@pytest.mark.slow
def test_a_run_killed_at_each_point_logs_each_epoch_once(chained):
    run, ref = chained
    assert epochs_logged(run) == epochs_logged(ref) == list(range(1, EPOCHS + 1))


@pytest.mark.slow
def test_a_run_killed_between_best_pt_and_last_pt_resumes_to_the_reference_best_pt(setup):
    """The epoch that turns out best writes best.pt, then last.pt: killed between the two (the order was the
    other way round, and the resumed run then never wrote that epoch's best.pt), it redoes the epoch."""
    root, script, ref, _ = setup
    run = root / "run_between"
    best_epoch = torch.load(ref / "best.pt", weights_only=True)["epoch"]
    killed(train(root, script, run, kill=f"before:last.pt:{best_epoch}"))  # epoch k's best.pt written, not its last.pt
    r = train(root, script, run, resume=True)
    assert r.returncode == 0, r.stderr
    assert json.loads((run / "run.json").read_text())["state"] == "complete"
    assert (run / "best.pt").is_file(), "the resumed run ended complete without a best.pt"
    same_weights(run / "best.pt", ref / "best.pt")
