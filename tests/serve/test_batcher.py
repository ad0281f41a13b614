"""DynamicBatcher in-process: batch limits, order, per-item results, failures, cancellation."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from cvkit.serve.batcher import DynamicBatcher


class Recorder:
    """A ``run_batch`` that doubles numbers and remembers each batch (optionally gated)."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.batches: list[list[int]] = []
        self.gate = gate

    def __call__(self, items: list[int]) -> list[int]:
        if self.gate is not None:
            self.gate.wait(5)
        if any(item < 0 for item in items):
            raise ValueError(f"negative item in {items}")
        self.batches.append(list(items))
        return [2 * item for item in items]


def _run(coroutine):
    return asyncio.run(coroutine)


async def _with_batcher(run_batch, max_rows, delay, body, observed=None, wait_for_incoming=False):
    with ThreadPoolExecutor(1) as executor:
        observe = None if observed is None else (lambda *args: observed.append(args))
        batcher = DynamicBatcher(run_batch, max_rows, delay, executor, observe, wait_for_incoming)
        batcher.start()
        try:
            return await body(batcher)
        finally:
            await batcher.stop()


def test_concurrent_items_fill_batches_up_to_max_rows_in_order():
    recorder, observed = Recorder(), []

    async def body(batcher):
        return await asyncio.gather(*(batcher.submit(i) for i in range(10)))

    results = _run(_with_batcher(recorder, 4, 0.5, body, observed))
    assert results == [2 * i for i in range(10)]
    assert recorder.batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert [rows for rows, _, _ in observed] == [4, 4, 2]
    assert all(len(waits) == rows for rows, waits, _ in observed)


def test_rows_count_and_a_large_item_waits_for_the_next_batch():
    recorder = Recorder()

    async def body(batcher):
        rows = [1, 2, 3, 1]
        return await asyncio.gather(*(batcher.submit(i, rows=r) for i, r in enumerate(rows)))

    assert _run(_with_batcher(recorder, 4, 0.2, body)) == [0, 2, 4, 6]
    assert recorder.batches == [[0, 1], [2, 3]]


@pytest.mark.parametrize("wait_for_incoming", [False, True])
def test_a_lone_item_waits_at_most_the_delay(wait_for_incoming):
    """Triton's policy waits the whole delay; waiting for incoming requests runs it at once."""
    recorder = Recorder()

    async def body(batcher):
        loop = asyncio.get_running_loop()
        started = loop.time()
        result = await batcher.submit(21)
        return result, loop.time() - started

    result, seconds = _run(_with_batcher(recorder, 8, 0.5, body, None, wait_for_incoming))
    assert result == 42
    if wait_for_incoming:
        assert seconds < 0.3
    else:
        assert 0.49 <= seconds < 2.0


def test_requests_arriving_during_a_run_form_the_next_batch():
    gate = threading.Event()
    recorder = Recorder(gate)

    async def body(batcher):
        first = asyncio.ensure_future(batcher.submit(0))
        await asyncio.sleep(0.05)  # batch [0] is running (held by the gate)
        rest = [asyncio.ensure_future(batcher.submit(i)) for i in (1, 2, 3)]
        await asyncio.sleep(0.05)
        gate.set()
        return await asyncio.gather(first, *rest)

    assert _run(_with_batcher(recorder, 8, 0.0, body)) == [0, 2, 4, 6]
    assert recorder.batches == [[0], [1, 2, 3]]


def test_a_failing_batch_fails_only_its_requests():
    recorder = Recorder()

    async def body(batcher):
        bad = await asyncio.gather(batcher.submit(1), batcher.submit(-1), return_exceptions=True)
        good = await batcher.submit(5)
        return bad, good

    (one, minus_one), good = _run(_with_batcher(recorder, 2, 0.2, body))
    assert isinstance(one, ValueError) and isinstance(minus_one, ValueError)
    assert good == 10


def test_a_request_that_gave_up_is_left_out_of_its_batch():
    recorder = Recorder()

    async def body(batcher):
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(batcher.submit(7), 0.05)
        return await batcher.submit(8)

    assert _run(_with_batcher(recorder, 4, 0.3, body)) == 16
    assert recorder.batches == [[8]]


def test_waiting_for_incoming_holds_the_batch_for_requests_on_their_way():
    recorder = Recorder()

    async def main(executor, late_item_arrives: bool):
        batcher = DynamicBatcher(recorder, 8, 0.5, executor, wait_for_incoming=True)
        batcher.start()
        loop = asyncio.get_running_loop()

        async def late():
            with batcher.incoming():  # e.g. its body is still being read
                await asyncio.sleep(0.1)
                if late_item_arrives:
                    return await batcher.enqueue(2)
            return None

        try:
            started = loop.time()
            pending = asyncio.ensure_future(late())
            await asyncio.sleep(0)  # the late request is marked before the first is queued
            first = await batcher.submit(1)
            return first, await pending, loop.time() - started
        finally:
            await batcher.stop()

    with ThreadPoolExecutor(1) as executor:
        assert _run(main(executor, True))[:2] == (2, 4)
        assert recorder.batches == [[1, 2]]  # one run held both
        first, _, seconds = _run(main(executor, False))
    # a marked request that never comes holds the batch no longer than the delay
    assert first == 2 and 0.09 <= seconds < 1.5
    assert recorder.batches == [[1, 2], [1]]
