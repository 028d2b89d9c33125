"""Training's input path: where the stored pixels of the training and validation rows live while a run
goes on, and how a batch of them reaches the device.

* **in memory** (the default when they fit the host-memory budget): the rows, copied once into one
  tensor, on the GPU when it has room for them, else in pinned host memory; a batch is an index into it.
* **streamed** (when they do not): nothing is copied up front; a background thread reads the next
  batches' rows from the store's file (``Store.read``: ``os.pread``, no memory map left resident) into
  pinned buffers while the current step runs, so resident memory stays a few batches whatever the size
  of the store. For a fixed seed both paths take the same batches and give the same weights.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from ..errors import ConfigError

DEFAULT_SHARE = 0.5  # of the memory available when the run starts, if --host-memory-gb is not given
PREFETCH = 3  # batches read ahead


def available_memory() -> int:
    """Bytes of memory available to a new allocation without swapping (Linux's MemAvailable; elsewhere
    the free physical pages)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def memory_budget(host_memory_gb: float) -> int:
    """The bytes the training rows may take in host memory: ``host_memory_gb``, or by default a safe share
    (``DEFAULT_SHARE``) of the memory available now."""
    if host_memory_gb < 0:
        raise ConfigError(
            f"--host-memory-gb must be >= 0 (0: {DEFAULT_SHARE:.0%} of available memory), not {host_memory_gb}"
        )
    return int(host_memory_gb * 2**30) if host_memory_gb else int(DEFAULT_SHARE * available_memory())


class InMemory:
    """The rows' pixels in one tensor (on the device or pinned on the host); ``source[pos]`` a batch."""

    streamed = False

    def __init__(self, pixels: torch.Tensor):
        self.pixels = pixels

    def __getitem__(self, pos: np.ndarray) -> torch.Tensor:
        return self.pixels[torch.from_numpy(pos).to(self.pixels.device)]


class Streamed:
    """The rows' pixels read from the store on demand; ``source[pos]`` reads a batch (pinned when the
    device is a GPU, so the copy to it can overlap the next step)."""

    streamed = True

    def __init__(self, store, rows: np.ndarray, pin: bool, transform=None):
        self.store, self.rows, self.pin = store, np.asarray(rows), pin
        self.transform = transform or (lambda images: images)

    def __getitem__(self, pos: np.ndarray) -> torch.Tensor:
        batch = torch.from_numpy(self.transform(self.store.read(self.rows[pos])))
        return batch.pin_memory() if self.pin else batch


def stage(store, rows: np.ndarray, device: torch.device, budget: int, transform=None) -> InMemory | Streamed:
    """The input path for ``rows`` of ``store``: in memory when they fit ``budget`` bytes, else streamed.
    ``transform``: applied to every image as it is read (the contract's intensity standardisation)."""
    nbytes = len(rows) * int(np.prod(store.images.shape[1:]))
    if nbytes > budget:
        return Streamed(store, rows, pin=device.type == "cuda", transform=transform)
    host = torch.from_numpy(transform(store.read(rows)) if transform else store.read(rows))
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return InMemory(host.to(device) if host.numel() < 0.5 * free else host.pin_memory())
    return InMemory(host)


def prefetch(source, batches: Sequence[np.ndarray], depth: int = PREFETCH) -> Iterator[torch.Tensor | None]:
    """The batches' host tensors, in order, read ``depth`` ahead by a background thread for a streamed
    source; ``None`` for each batch of an in-memory source (indexed where it lives, on the device). An
    error in the reader is raised here, in the training loop."""
    if not source.streamed:
        yield from (None for _ in batches)
        return
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def reader():
        try:
            for pos in batches:
                if stop.is_set():
                    return
                q.put(source[pos])
        except BaseException as e:  # handed to the consumer, which raises it
            q.put(e)

    thread = threading.Thread(target=reader, name="covidnet-prefetch", daemon=True)
    thread.start()
    try:
        for _ in batches:
            item = q.get()
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a reader waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)
