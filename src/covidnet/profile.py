"""Complexity and speed of an architecture: parameters, MACs, batch-1 latency, peak memory.

MACs are counted with ``torch.utils.flop_counter`` (convolutions and matrix products; MACs = FLOPs / 2),
the convention of the COVID-Net paper and most model tables: normalisation, activations, pooling and
additions are not counted.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from .config import option
from .errors import ConfigError, UsageError
from .models import create_model, get_spec, list_models


@dataclass
class ProfileConfig:
    """``covidnet profile``: which architectures, at which size, measured how."""

    arch: list[str] = option(
        default_factory=list, help="architecture name(s); see `covidnet models`", metavar="ARCH", positional=True
    )
    all_models: bool = option(False, "every registered architecture at its default size", flag="--all")
    paper: bool = option(False, "the reference's published model table beside our measurements")
    size: int | None = option(None, "input side in pixels (default: the architecture's own)")
    in_channels: int = option(3, "input channels", choices=(1, 3))
    runs: int = option(10, "timed forwards; 0 skips latency and memory")
    warmup: int = option(3, "untimed forwards before timing")
    device: str = option("cpu", "device for latency and memory, e.g. cpu or cuda")
    threads: int | None = option(None, "CPU threads for torch (default: torch's choice)")
    json: bool = option(False, "print one JSON object (a list for several)")
    progress: bool = option(True, "no progress bar", flag="--quiet", negate=True)

    def names(self) -> list[str]:
        """The architectures to profile; one line when none is given or a name is unknown."""
        if self.paper:
            if self.arch or self.all_models:
                raise UsageError("--paper profiles the reference's configurations; give it no ARCH and no --all")
            return []
        names = list_models() if self.all_models else list(self.arch)
        if not names:
            raise UsageError("give an architecture (ARCH), --all or --paper; names: " + ", ".join(list_models()))
        for n in names:
            get_spec(n)  # fail on a wrong name before profiling anything
        return names


@dataclass
class Profile:
    arch: str
    size: int
    in_channels: int
    num_classes: int
    params: int
    macs: int
    device: str
    latency_ms: float | None  # median batch-1 forward time after warm-up, None when not measured
    latency_runs: int
    threads: int
    peak_mem_mb: float | None  # peak tensor memory of a batch-1 forward: weights + activations, MiB
    torch_version: str

    def to_dict(self) -> dict:
        d = asdict(self)
        # the key the issue and scripts read: latency on the device it was measured on
        d[f"latency_ms_{self.device.split(':')[0]}"] = d.pop("latency_ms")
        return d


def count_macs(model: torch.nn.Module, x: torch.Tensor) -> int:
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(x)
    return counter.get_total_flops() // 2


def _peak_memory_mb(model: torch.nn.Module, x: torch.Tensor) -> float | None:
    """Peak bytes held by tensors during one forward (parameters, buffers, activations, temporaries),
    from torch's MemTracker, which accounts for every allocation on CPU and GPU alike. ``None`` where
    this torch build lacks it (it lives in ``torch.distributed``, absent from some builds)."""
    try:
        from torch.distributed._tools.mem_tracker import MemTracker
    except Exception:  # pragma: no cover - depends on the torch build
        return None
    tracker = MemTracker()
    tracker.track_external(model, x)
    with torch.inference_mode(), tracker:
        model(x)
    snapshot = tracker.get_tracker_snapshot("peak")
    return snapshot.get(x.device, {}).get("Total", 0) / 2**20


def _latency_ms(model: torch.nn.Module, x: torch.Tensor, runs: int, warmup: int) -> float:
    sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)
    times = []
    with torch.inference_mode():
        for i in range(warmup + runs):
            sync()
            t0 = time.perf_counter()
            model(x)
            sync()
            if i >= warmup:
                times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def profile_model(
    arch: str,
    size: int | None = None,
    in_channels: int = 3,
    num_classes: int = 3,
    runs: int = 10,
    warmup: int = 3,
    device: str = "cpu",
    threads: int | None = None,
) -> Profile:
    """Profile ``arch`` at ``size`` x ``size`` (its default input size when None).

    ``runs=0`` skips the timed forwards and the memory measurement; then the model is built on the
    meta device, which costs neither time nor memory.
    """
    spec = get_spec(arch)
    size = size or spec.input_size
    if size < 32:
        raise ConfigError(f"--size must be at least 32 px (the networks downsample 32x), not {size}")
    if runs < 0 or warmup < 0:
        raise ConfigError("--runs and --warmup must not be negative")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: no CUDA device is available here")
    if threads:
        torch.set_num_threads(threads)

    with torch.device("meta"):
        meta_model = create_model(arch, num_classes=num_classes, in_channels=in_channels).eval()
        macs = count_macs(meta_model, torch.empty(1, in_channels, size, size))
    params = sum(p.numel() for p in meta_model.parameters())
    latency = peak = None
    if runs:
        torch.manual_seed(0)
        model = create_model(arch, num_classes=num_classes, in_channels=in_channels).eval().to(device)
        x = torch.randn(1, in_channels, size, size, device=device)
        latency = _latency_ms(model, x, runs, warmup)
        peak = _peak_memory_mb(model, x)
    return Profile(
        arch=arch,
        size=size,
        in_channels=in_channels,
        num_classes=num_classes,
        params=params,
        macs=macs,
        device=device,
        latency_ms=latency,
        latency_runs=runs,
        threads=torch.get_num_threads(),
        peak_mem_mb=peak,
        torch_version=torch.__version__,
    )


# The reference's published model table (lindawangg/COVID-Net ``docs/models.md``; CXR3-B's 11.75 M is
# the Scientific Reports paper's figure) and, per row, the registry entry that reproduces it here.
PAPER_TABLE: list[dict] = [
    {"model": "COVIDNet-CXR Small", "size": 224, "params_m": 117.4, "macs_g": 2.26, "arch": "covidnet-cxr-small"},
    {"model": "COVIDNet-CXR Large", "size": 224, "params_m": 127.4, "macs_g": 3.59, "arch": "covidnet-cxr-large"},
    {"model": "COVIDNet-CXR3-B / CXR4-B", "size": 480, "params_m": 11.75, "macs_g": 7.50, "arch": "covidnet-cxr3b"},
    {"model": "COVIDNet-CXR3-C / CXR4-C", "size": 480, "params_m": 9.2, "macs_g": 5.55, "arch": None},
    {"model": "COVIDNet-CXR-2", "size": 480, "params_m": 8.8, "macs_g": 5.55, "arch": None},
    {"model": "COVIDNet-CXR3-A / CXR4-A", "size": 480, "params_m": 40.2, "macs_g": 23.63, "arch": None},
    {"model": "VGG-19 (paper baseline)", "size": 480, "params_m": None, "macs_g": None, "arch": "vgg19"},
    {"model": "ResNet-50 (paper baseline)", "size": 480, "params_m": None, "macs_g": None, "arch": "resnet50"},
]


def paper_comparison(
    runs: int = 10, warmup: int = 3, device: str = "cpu", threads: int | None = None, progress=None
) -> list[dict]:
    """Each row of ``PAPER_TABLE`` with what this project measures for the same configuration
    (``ours``: a ``Profile`` dict, or None where no preset reproduces the row)."""
    rows = []
    for row in progress(PAPER_TABLE) if progress else PAPER_TABLE:
        ours = None
        if row["arch"]:
            ours = profile_model(
                row["arch"], row["size"], runs=runs, warmup=warmup, device=device, threads=threads
            ).to_dict()
        rows.append({**row, "ours": ours})
    return rows
