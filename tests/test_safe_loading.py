"""A checkpoint cannot run code: every command that reads a ``.pt`` refuses a crafted one with one line
naming the file, and the crafted payload (issue 28's ``__reduce__`` that creates a file) never runs.
Checkpoints the current code writes keep loading. Everything here goes through the ``covidnet``
command (``covidnet.cli.main``) and ``covidnet.checkpoint``, on phantoms built and trained by the CLI."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from covidnet.checkpoint import FORMAT, read_checkpoint, save_checkpoint
from covidnet.cli import main
from covidnet.errors import CovidnetError, UnsafeCheckpointError

SIZE = 32  # stored side of the phantom build: the smallest that keeps a training step fast
TRAIN = ["--epochs", "1", "--max-steps", "2", "--precise-bn", "0", "--no-progress", "--device", "cpu"]


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """``covidnet ARGS`` in this process: (exit status, stdout, stderr)."""
    capsys.readouterr()
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


class Payload:
    """What issue 28 found: a checkpoint whose unpickling runs a shell command (here: creates ``marker``)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class OpenPayload(Payload):
    """The same without a shell: unpickling opens ``marker`` for writing, which creates it."""

    def __reduce__(self):
        return open, (str(self.marker), "w")


def craft(path: Path, marker: Path, where: str = "top", payload=Payload, legacy: bool = False) -> Path:
    """A checkpoint with the format marker and a payload ``where``: beside it (``top``), inside the
    model's state dict (``weights``), or the whole file a plain pickle (``pickle``)."""
    obj = {"format": FORMAT, "version": "0.1.0", "arch": "covidnet-cxr3b", "arch_args": {}}
    if where == "top":
        obj["payload"] = payload(marker)
    elif where == "weights":
        obj["model"] = {"conv.weight": torch.zeros(2), "conv.bias": payload(marker)}
    if where == "pickle":
        with open(path, "wb") as f:
            pickle.dump({**obj, "payload": payload(marker)}, f)
    else:
        torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return path


def assert_refused(rc: int, err: str, evil: Path, marker: Path) -> None:
    """Exit 1, one line on stderr naming the file and saying it was refused, and no payload run."""
    lines = err.strip().splitlines()
    assert rc == 1, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("covidnet: error: ") and str(evil) in lines[0] and "refused" in lines[0], lines[0]
    assert not marker.exists(), f"the crafted checkpoint's payload ran: {marker} exists"


# --- the loader itself --------------------------------------------------------------------------------------


def test_the_crafted_checkpoint_is_live_when_unpickled_without_restriction(tmp_path):
    """The payload these tests use does run under plain unpickling (in a child process), so its absence
    elsewhere means the loader refused it, not that the payload was inert."""
    marker = tmp_path / "pwned.txt"
    evil = craft(tmp_path / "evil.pt", marker)
    code = f"import torch; torch.load({str(evil)!r}, weights_only=False)"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    assert marker.exists()


@pytest.mark.parametrize(
    "where, payload, legacy",
    [
        ("top", Payload, False),
        ("weights", Payload, False),
        ("top", OpenPayload, False),
        ("top", Payload, True),  # torch's pre-1.6 (non-zip) format
        ("pickle", Payload, False),  # a plain pickle named .pt
    ],
)
def test_read_checkpoint_refuses_every_crafted_file_and_runs_no_payload(tmp_path, where, payload, legacy):
    marker = tmp_path / "pwned.txt"
    evil = craft(tmp_path / "evil.pt", marker, where, payload, legacy)
    with pytest.raises(UnsafeCheckpointError) as e:
        read_checkpoint(evil)
    message = str(e.value)
    assert "\n" not in message and message.startswith(f"{evil}: refused")
    if where != "pickle":  # the global it would have imported is named
        assert ("system" in message) or ("open" in message), message
    assert not marker.exists()


def test_a_file_that_is_not_a_checkpoint_is_one_line_naming_it(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CovidnetError) as e:
        read_checkpoint(junk)
    assert str(e.value).startswith(f"{junk}: not a readable checkpoint") and "\n" not in str(e.value)
    torch.save({"weights": torch.ones(3)}, tmp_path / "plain.pt")  # safe, but not ours
    with pytest.raises(CovidnetError, match="not a covidnet checkpoint"):
        read_checkpoint(tmp_path / "plain.pt")


def test_what_save_checkpoint_writes_reads_back_equal(tmp_path):
    """Every kind of value a checkpoint holds (tensors, state dicts, optimiser state, the contract, configs,
    metrics with NaN, None, nested lists) survives the restricted loader unchanged."""
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(2, 1, 5, 5)).sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt)
    sched.step(1.0)
    payload = {
        "arch": "x",
        "arch_args": {"num_classes": 3, "widths": (8, 16)},
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "classes": ["normal", "pneumonia", "COVID-19"],
        "preprocess": {"stored_size": 32, "mean": [0.5], "std": [0.25], "top_crop": 0.08},
        "val_metrics": {"ppv": {"normal": float("nan")}, "n": 13},
        "temperature": None,
        "epoch": 1,
    }
    save_checkpoint(tmp_path / "ok.pt", payload)
    ckpt = read_checkpoint(tmp_path / "ok.pt")
    assert ckpt["format"] == FORMAT and ckpt["classes"] == payload["classes"]
    for k, v in model.state_dict().items():
        assert torch.equal(ckpt["model"][k], v)
    assert ckpt["optimizer"]["param_groups"] == opt.state_dict()["param_groups"]
    assert torch.equal(ckpt["optimizer"]["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert ckpt["scheduler"]["best"] == 1.0 and ckpt["arch_args"]["widths"] == (8, 16)
    assert ckpt["val_metrics"]["ppv"]["normal"] != ckpt["val_metrics"]["ppv"]["normal"]  # NaN


# --- every command that reads a .pt -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """Phantoms with their lung masks built at 32 px, a classifier (with last.pt) and a lung segmenter
    trained two steps each, all by the CLI."""
    root = tmp_path_factory.mktemp("safe")
    assert main(["data", "synth", "--out", str(root / "ph"), "--n", "30", "--size", "64", "--quiet"]) == 0
    build = ["data", "build", "--source", f"cohen={root / 'ph'}", "--size", str(SIZE), "--workers", "1", "--quiet"]
    build += ["--val-fraction", "0.2", "--test-fraction", "0.2"]
    assert main([*build, "--out", str(root / "ds"), "--lung-masks", f"phantom={root / 'ph' / 'lungmasks'}"]) == 0
    assert main(["train", "--data", str(root / "ds"), "--out", str(root / "run"), *TRAIN]) == 0
    lungs = ["lungs", "train", "--data", str(root / "ds"), "--out", str(root / "lrun"), "--arch", "lung-unet-tiny"]
    assert main([*lungs, "--epochs", "1", "--max-steps", "2", "--no-progress", "--device", "cpu"]) == 0
    return root


def image_of(work: Path) -> Path:
    return sorted((work / "ph" / "images").iterdir())[0]


COMMANDS = {  # command -> its arguments, with EVIL where the crafted checkpoint goes
    "predict": lambda w, o: ["predict", "--checkpoint", "EVIL", image_of(w)],
    "eval": lambda w, o: ["eval", "--checkpoint", "EVIL", "--data", w / "ds", "--resamples", "10"],
    "calibrate": lambda w, o: ["calibrate", "--checkpoint", "EVIL", "--data", w / "ds", "--temperature"],
    "audit": lambda w, o: ["audit", "--checkpoint", "EVIL", "--data", w / "ds", "--report", o / "audit"],
    "export": lambda w, o: ["export", "--checkpoint", "EVIL", "--out", o / "m.onnx", "--data", w / "ds"],
    "train --init": lambda w, o: ["train", "--data", w / "ds", "--out", o / "r", "--init", "EVIL", *TRAIN],
    "train --lung-model": lambda w, o: [
        *["train", "--data", w / "ds", "--out", o / "r", "--lungs", "crop", "--lung-model", "EVIL", *TRAIN]
    ],
    "lungs eval": lambda w, o: ["lungs", "eval", "--checkpoint", "EVIL", "--data", w / "ds", "--report", o / "le"],
    "lungs predict": lambda w, o: ["lungs", "predict", "EVIL", image_of(w), "--out", o / "masks"],
    "data build --lungs": lambda w, o: [
        *["data", "build", "--source", f"cohen={w / 'ph'}", "--out", o / "ds", "--size", str(SIZE)],
        *["--workers", "1", "--quiet", "--lungs", "EVIL"],
    ],
    "study shortcuts --lung-model": lambda w, o: [
        *["study", "shortcuts", "--data", w / "ds", "--out", o / "study", "--variants", "baseline,lungs-crop"],
        *["--seeds", "1", "--epochs", "1", "--lung-model", "EVIL", "--quiet"],
    ],
}


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_refuses_a_crafted_checkpoint_in_one_line_and_runs_no_payload(work, tmp_path, capsys, command):
    marker = tmp_path / "pwned.txt"
    evil = craft(tmp_path / "evil.pt", marker)
    args = [evil if a == "EVIL" else a for a in COMMANDS[command](work, tmp_path)]
    rc, _, err = cli(capsys, *args)
    assert_refused(rc, err, evil, marker)


def test_train_resume_refuses_a_crafted_last_pt_and_runs_no_payload(work, tmp_path, capsys):
    run = shutil.copytree(work / "run", tmp_path / "run")
    marker = tmp_path / "pwned.txt"
    craft(run / "last.pt", marker)
    rc, _, err = cli(capsys, "train", "--data", work / "ds", "--out", run, *TRAIN, "--resume")
    assert_refused(rc, err, run / "last.pt", marker)


def test_lungs_train_resume_refuses_a_crafted_last_pt_and_runs_no_payload(work, tmp_path, capsys):
    run = shutil.copytree(work / "lrun", tmp_path / "lrun")
    marker = tmp_path / "pwned.txt"
    craft(run / "last.pt", marker)
    args = ["lungs", "train", "--data", work / "ds", "--out", run, "--arch", "lung-unet-tiny", "--epochs", "1"]
    rc, _, err = cli(capsys, *args, "--max-steps", "2", "--no-progress", "--device", "cpu", "--resume")
    assert_refused(rc, err, run / "last.pt", marker)


def test_pretrain_resume_refuses_a_crafted_last_pt_and_runs_no_payload(work, tmp_path, capsys):
    run = tmp_path / "ssl"
    args = ["pretrain", "--data", work / "ds", "--out", run, "--epochs", "1", "--max-steps", "2"]
    args += ["--no-progress", "--device", "cpu"]
    assert cli(capsys, *args)[0] == 0
    marker = tmp_path / "pwned.txt"
    craft(run / "last.pt", marker)
    rc, _, err = cli(capsys, *args, "--resume")
    assert_refused(rc, err, run / "last.pt", marker)


def test_serve_refuses_a_crafted_checkpoint_at_startup_and_runs_no_payload(tmp_path):
    """The real ``covidnet serve`` in a subprocess (a regression would leave it serving: the timeout ends it)."""
    marker = tmp_path / "pwned.txt"
    evil = craft(tmp_path / "evil.pt", marker)
    exe = Path(sys.executable).parent / "covidnet"
    r = subprocess.run(
        [str(exe), "serve", "--checkpoint", str(evil), "--port", "0"], capture_output=True, text=True, timeout=120
    )
    assert_refused(r.returncode, r.stderr, evil, marker)


def test_the_service_app_factory_refuses_a_crafted_checkpoint_and_runs_no_payload(tmp_path):
    pytest.importorskip("fastapi")
    from covidnet.serve import ServeConfig, create_app

    marker = tmp_path / "pwned.txt"
    evil = craft(tmp_path / "evil.pt", marker)
    with pytest.raises(UnsafeCheckpointError, match="refused"):
        create_app(ServeConfig(checkpoint=str(evil)))
    assert not marker.exists()


# --- what the code writes keeps loading -------------------------------------------------------------------


@pytest.mark.slow
def test_checkpoints_the_code_writes_load_and_run(work, tmp_path, capsys):
    """best.pt and last.pt of `covidnet train` and `covidnet lungs train`, and a calibrated best.pt, read
    back through the restricted loader and drive predict, eval, lungs predict and a --resume."""
    for name in ("run/best.pt", "run/last.pt", "lrun/best.pt", "lrun/last.pt"):
        ckpt = read_checkpoint(work / name)
        assert ckpt["format"] == FORMAT and all(isinstance(v, torch.Tensor) for v in ckpt["model"].values())
    calibrated = shutil.copy(work / "run" / "best.pt", tmp_path / "cal.pt")
    rc, _, err = cli(capsys, "calibrate", "--checkpoint", calibrated, "--data", work / "ds", "--temperature")
    assert rc == 0, err
    assert isinstance(read_checkpoint(calibrated)["temperature"], float)
    rc, out, err = cli(capsys, "predict", "--checkpoint", calibrated, image_of(work))
    assert rc == 0 and image_of(work).name in out, err
    rc, _, err = cli(capsys, "eval", "--checkpoint", work / "run" / "best.pt", "--data", work / "ds", "--resamples", 10)
    assert rc == 0, err
    args = ["lungs", "predict", work / "lrun" / "best.pt", image_of(work), "--out", tmp_path / "m"]
    rc, _, err = cli(capsys, *args)
    assert rc == 0 and any((tmp_path / "m").iterdir()), err
    run = shutil.copytree(work / "run", tmp_path / "run")
    rc, _, err = cli(capsys, "train", "--data", work / "ds", "--out", run, "--epochs", "2", *TRAIN[2:], "--resume")
    assert rc == 0, err
    assert read_checkpoint(run / "last.pt")["epoch"] == 2


def test_the_python_api_load_refuses_a_crafted_checkpoint_and_runs_no_payload(tmp_path):
    """``covidnet.load(path)``, the one way the Python API opens a model of any task."""
    import covidnet

    marker = tmp_path / "pwned.txt"
    evil = craft(tmp_path / "evil.pt", marker)
    with pytest.raises(UnsafeCheckpointError, match="refused"):
        covidnet.load(evil)
    assert not marker.exists()
