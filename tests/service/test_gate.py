"""Work in flight is bounded: 503 with Retry-After when no slot frees in time, 504 when a request
runs too long, and an abandoned job keeps its slot until it really stops."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from service.core import protocol
from service.core.errors import Overloaded, TimedOut
from service.core.gate import WorkGate
from tests.service.test_errors import assert_error, post_raw


def test_runs_jobs_off_the_event_loop() -> None:
    async def main() -> tuple[str, float]:
        gate = WorkGate(2, 2, 1.0, 5.0)
        try:
            return await gate.run(lambda cancel: threading.current_thread().name)
        finally:
            gate.shutdown()

    name, queued = asyncio.run(main())
    assert name.startswith("verydeep-work") and queued < 0.5


def test_full_queue_and_queue_timeout_are_overloaded() -> None:
    release = threading.Event()

    async def main() -> None:
        gate = WorkGate(1, 1, 0.2, 30.0)
        busy = asyncio.ensure_future(gate.run(lambda cancel: release.wait(10)))
        await asyncio.sleep(0.05)
        waiting = asyncio.ensure_future(gate.run(lambda cancel: "second"))
        await asyncio.sleep(0.05)
        with pytest.raises(Overloaded, match="1 waiting") as refused:
            await gate.run(lambda cancel: "third")
        assert refused.value.retryable
        with pytest.raises(Overloaded, match="no slot freed within 0.2 s"):
            await waiting
        release.set()
        assert (await busy)[0] is True
        assert (await gate.run(lambda cancel: "after"))[0] == "after"
        gate.shutdown()

    asyncio.run(main())


def test_timed_out_job_is_cancelled_and_keeps_its_slot_until_it_stops() -> None:
    stopped = threading.Event()

    def slow(cancel: threading.Event) -> None:
        while not cancel.wait(0.01):
            pass
        time.sleep(0.2)  # the job takes a while to notice and stop
        stopped.set()

    async def main() -> None:
        gate = WorkGate(1, 4, 5.0, 0.05)
        with pytest.raises(TimedOut, match="0.05 s"):
            await gate.run(slow)
        assert not stopped.is_set()
        _, queued = await gate.run(lambda cancel: stopped.is_set())
        assert stopped.is_set() and queued > 0.1
        gate.shutdown()

    asyncio.run(main())


def test_503_overloaded_through_the_app(
    make_client: Callable, png: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    started, release = threading.Event(), threading.Event()
    real_classify = protocol.classify

    def blocking_classify(*args, **kwargs):
        started.set()
        release.wait(30)
        return real_classify(*args, **kwargs)

    monkeypatch.setattr(protocol, "classify", blocking_classify)
    client = make_client(max_concurrency=1, queue_timeout=0, retry_after=3)
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(post_raw, client, png, scales="224")
        assert started.wait(30)
        refused = post_raw(client, png, scales="224")
        release.set()
        assert first.result(timeout=60).status_code == 200
    assert_error(refused, 503, "overloaded")
    assert refused.headers["retry-after"] == "3"


def test_504_timeout_through_the_app(make_client: Callable, png: bytes) -> None:
    client = make_client(request_timeout=0.001)
    response = post_raw(client, png, method="combined", scales="224,256")
    assert_error(response, 504, "timeout")
