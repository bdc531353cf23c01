"""Bounding work in flight: a fixed thread pool, a bounded queue and two deadlines."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Protocol, TypeVar

from service.core.errors import Overloaded, TimedOut

T = TypeVar("T")


class Gauge(Protocol):
    def inc(self, amount: float = 1) -> None: ...

    def set(self, value: float) -> None: ...


class GateGauges(Protocol):
    """Where the gate reports its counts (the app's Prometheus gauges)."""

    in_flight: Gauge
    queued: Gauge
    admitted: Gauge


class WorkGate:
    """Runs blocking jobs off the event loop, at most ``max_concurrency`` at once.

    A job first waits for a slot: when ``max_queue`` jobs are already waiting, or the wait exceeds
    ``queue_timeout`` seconds, it is refused with 503 (Overloaded, retryable). Once running, it has
    ``request_timeout`` seconds before the client gets 504 (TimedOut); the job is then told to stop
    through the ``threading.Event`` it receives, and keeps its slot until it actually stops, so
    the number of running jobs never exceeds ``max_concurrency``.

    ``admit`` bounds the requests in the service as a whole (reading their upload, waiting for a
    slot or running) to ``max_concurrency + max_queue``: the next one is refused with 503 before
    its body is read, so a flood of uploads cannot buffer more than that many bodies.
    """

    def __init__(
        self,
        max_concurrency: int,
        max_queue: int,
        queue_timeout: float,
        request_timeout: float,
        metrics: GateGauges | None = None,
    ) -> None:
        self.max_concurrency = max_concurrency
        self.max_queue = max_queue
        self.queue_timeout = queue_timeout
        self.request_timeout = request_timeout
        self._metrics = metrics
        self._executor = ThreadPoolExecutor(max_concurrency, thread_name_prefix="verydeep-work")
        self._slots = asyncio.Semaphore(max_concurrency)
        self._waiting = 0
        self._admitted = 0

    @property
    def max_admitted(self) -> int:
        return self.max_concurrency + self.max_queue

    @property
    def admitted(self) -> int:
        return self._admitted

    @asynccontextmanager
    async def admit(self) -> AsyncIterator[None]:
        """Hold one of ``max_admitted`` places for the rest of a request, or raise Overloaded."""
        if self._admitted >= self.max_admitted:
            raise self._overloaded(f"{self._admitted} requests already admitted")
        self._admitted += 1
        self._set_admitted()
        try:
            yield
        finally:
            self._admitted -= 1
            self._set_admitted()

    async def run(self, job: Callable[[threading.Event], T]) -> tuple[T, float]:
        """``(job's result, seconds spent waiting for a slot)``."""
        started = time.perf_counter()
        await self._acquire()
        queued = time.perf_counter() - started
        cancel = threading.Event()
        try:
            future = asyncio.get_running_loop().run_in_executor(self._executor, job, cancel)
        except BaseException:  # the executor is shut down: the app is stopping
            self._slots.release()
            raise
        self._track(+1)
        future.add_done_callback(self._job_done)
        try:
            async with asyncio.timeout(self.request_timeout):
                result = await asyncio.shield(future)
        except TimeoutError:
            cancel.set()
            raise TimedOut(
                f"the request took longer than {self.request_timeout:g} s and was abandoned"
            ) from None
        except asyncio.CancelledError:
            cancel.set()
            raise
        return result, queued

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _acquire(self) -> None:
        if not self._slots.locked():
            await self._slots.acquire()
            return
        if self._waiting >= self.max_queue or self.queue_timeout <= 0:
            raise self._overloaded(
                f"{self.max_concurrency} requests running and {self._waiting} waiting"
            )
        self._waiting += 1
        self._set_queued()
        try:
            async with asyncio.timeout(self.queue_timeout):
                await self._slots.acquire()
        except TimeoutError:
            raise self._overloaded(f"no slot freed within {self.queue_timeout:g} s") from None
        finally:
            self._waiting -= 1
            self._set_queued()

    def _overloaded(self, why: str) -> Overloaded:
        return Overloaded(f"the service is busy ({why}); retry later")

    def _job_done(self, future: asyncio.Future[object]) -> None:
        self._slots.release()
        self._track(-1)
        if not future.cancelled():
            future.exception()  # an abandoned job's error is expected, not "never retrieved"

    def _track(self, delta: int) -> None:
        if self._metrics is not None:
            self._metrics.in_flight.inc(delta)

    def _set_queued(self) -> None:
        if self._metrics is not None:
            self._metrics.queued.set(self._waiting)

    def _set_admitted(self) -> None:
        if self._metrics is not None:
            self._metrics.admitted.set(self._admitted)
