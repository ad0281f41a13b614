"""Dynamic batching: concurrent requests for one model gathered into one ``session.run``.

Triton's dynamic batcher, in asyncio: a request :meth:`~DynamicBatcher.submit`\\ s an item that
counts ``rows`` (1 for an image, ``B`` for a V2 tensor ``[B, ...]``). The first item in an
empty queue waits at most ``max_delay_s`` for others; the batch closes earlier once it holds
``max_rows`` rows. With ``wait_for_incoming`` the wait is shorter still: it lasts only while
requests marked by :meth:`~DynamicBatcher.incoming` (received, their body still being read or
decoded) are on their way, so a lone request runs at once instead of idling for the delay,
while a burst still fills the batch. A worker thread (the executor) runs ``run_batch`` on the
gathered items, so the event loop keeps accepting requests while the model runs and the
requests that arrive meanwhile form the next batch. ``run_batch`` returns one result per item,
in order, and each request gets its own. A request that gave up (timeout, client gone) before
its batch ran is left out of it; an exception in ``run_batch`` fails that batch's requests
only.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

Item = TypeVar("Item")
Output = TypeVar("Output")

BatchObserver = Callable[[int, Sequence[float], float], None]


@dataclass
class _Pending(Generic[Item]):
    item: Item
    rows: int
    future: asyncio.Future
    queued_at: float = field(default_factory=time.perf_counter)


class DynamicBatcher(Generic[Item, Output]):
    """Gathers submitted items into batches for ``run_batch``.

    Args:
        run_batch: called in the batcher's thread with the batch's items (in arrival order);
            returns one output per item, in the same order.
        max_rows: most rows per batch; one item with more rows runs alone.
        max_delay_s: longest wait of a batch's first item for more to arrive (0: take only
            what is already queued).
        executor: runs ``run_batch`` (one thread: batchers sharing it never run at once).
        observe: called after each batch with its row count, each item's seconds in the
            queue, and the seconds ``run_batch`` took (for metrics).
        wait_for_incoming: wait for more items only while some are marked
            :meth:`incoming` (never longer than ``max_delay_s``); else always up to
            ``max_delay_s``, as Triton's queue delay.
    """

    def __init__(
        self,
        run_batch: Callable[[list[Item]], Sequence[Output]],
        max_rows: int,
        max_delay_s: float,
        executor: ThreadPoolExecutor,
        observe: BatchObserver | None = None,
        wait_for_incoming: bool = False,
    ) -> None:
        self.run_batch = run_batch
        self.max_rows = max_rows
        self.max_delay_s = max_delay_s
        self.observe = observe
        self.wait_for_incoming = wait_for_incoming
        self._incoming = 0
        self._executor = executor
        self._queue: asyncio.Queue[_Pending[Item]] | None = None
        self._carry: _Pending[Item] | None = None
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        """Start gathering on the running event loop."""
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        """Stop gathering; requests still queued fail (the executor stays with its owner)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        waiting = [self._carry] if self._carry else []
        while self._queue is not None and not self._queue.empty():
            waiting.append(self._queue.get_nowait())
        for pending in waiting:
            if not pending.future.done():
                pending.future.set_exception(RuntimeError("the server is shutting down"))

    @contextmanager
    def incoming(self) -> Iterator[None]:
        """Mark a request on its way to :meth:`enqueue` (its body read, its image decoded)
        for the duration of the block; with ``wait_for_incoming`` a batch waits only for
        those."""
        self._incoming += 1
        try:
            yield
        finally:
            self._incoming -= 1

    def enqueue(self, item: Item, rows: int = 1) -> asyncio.Future:
        """Queue ``item`` (``rows`` rows); the returned future gets its output."""
        if self._queue is None:
            raise RuntimeError("DynamicBatcher.start() was not called")
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(item, rows, future))
        return future

    async def submit(self, item: Item, rows: int = 1) -> Output:
        """Queue ``item`` (``rows`` rows) and wait for its output."""
        return await self.enqueue(item, rows)

    async def _next(self, timeout: float | None) -> _Pending[Item] | None:
        assert self._queue is not None
        if self._carry is not None:
            pending, self._carry = self._carry, None
            return pending
        if timeout is None:
            return await self._queue.get()
        if timeout <= 0 or not self._queue.empty():
            return None if self._queue.empty() else self._queue.get_nowait()
        try:
            return await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            return None

    async def _gather(self) -> list[_Pending[Item]]:
        loop = asyncio.get_running_loop()
        first = await self._next(None)
        assert first is not None
        batch, rows = [first], first.rows
        deadline = loop.time() + self.max_delay_s
        while rows < self.max_rows:
            waiting = not self.wait_for_incoming or self._incoming > 0
            pending = await self._next(deadline - loop.time() if waiting else 0)
            if pending is None:
                break
            if pending.future.done():
                continue
            if rows + pending.rows > self.max_rows:
                self._carry = pending
                break
            batch.append(pending)
            rows += pending.rows
        return batch

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [pending for pending in await self._gather() if not pending.future.done()]
            if not batch:
                continue
            started = time.perf_counter()
            waits = [started - pending.queued_at for pending in batch]
            try:
                outputs: Any = await loop.run_in_executor(
                    self._executor, self.run_batch, [pending.item for pending in batch]
                )
                if len(outputs) != len(batch):
                    raise RuntimeError(
                        f"run_batch returned {len(outputs)} outputs for {len(batch)} items"
                    )
            except Exception as exc:  # the batch's requests fail; the server keeps serving
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(exc)
                continue
            if self.observe is not None:
                self.observe(sum(p.rows for p in batch), waits, time.perf_counter() - started)
            for pending, output in zip(batch, outputs, strict=True):
                if not pending.future.done():
                    pending.future.set_result(output)
