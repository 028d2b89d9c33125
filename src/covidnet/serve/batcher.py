"""Dynamic batching: requests that arrive together share one forward pass.

Written here because the serving libraries that batch (Triton, TorchServe, Ray Serve) are whole servers
of their own; what the service needs is one asyncio queue in front of one model thread. Every model call
(batched forward passes and heat maps) runs on that single thread, so the model is never used by two
threads at once and the event loop never blocks on it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np


class DynamicBatcher:
    """``submit(image)`` -> a future of that image's logits. The loop takes the first waiting image,
    then whatever else is waiting, waiting up to ``max_wait_s`` for more, up to ``max_batch`` images;
    ``max_batch=1`` turns batching off."""

    def __init__(self, logits: Callable[[np.ndarray], np.ndarray], max_batch: int = 16, max_wait_s: float = 0.002):
        self._logits = logits
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="covidnet-model")
        self.stats = {"batches": 0, "images": 0, "largest_batch": 0}
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._run(), name="covidnet-batcher")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self.executor.shutdown(wait=False, cancel_futures=True)

    def submit(self, image: np.ndarray) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((image, fut))
        return fut

    async def call(self, fn, *args):
        """Run ``fn(*args)`` on the model thread (heat maps share the model with the batches)."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = [await self._queue.get()]
            deadline = loop.time() + self.max_wait_s
            while len(items) < self.max_batch:
                if not self._queue.empty():
                    items.append(self._queue.get_nowait())
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    items.append(await asyncio.wait_for(self._queue.get(), remaining))
                except TimeoutError:
                    break
            items = [(img, fut) for img, fut in items if not fut.done()]  # timed-out requests are dropped
            if not items:
                continue
            try:
                logits = await self.call(self._logits, np.stack([img for img, _ in items]))
            except Exception as exc:  # a failed batch fails its requests, not the service
                for _, fut in items:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            self.stats["batches"] += 1
            self.stats["images"] += len(items)
            self.stats["largest_batch"] = max(self.stats["largest_batch"], len(items))
            for (_, fut), row in zip(items, logits):
                if not fut.done():
                    fut.set_result(row)
