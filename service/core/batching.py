"""Batches across requests (docs/serving.md, "Batching"): views of one model with the same input
shape, from requests in flight together, run in one network call.

A request's thread submits a job (its views of one shape, at most ``max_views`` of them) and
waits. The first job of a shape makes its thread the shape's leader: it waits up to ``window_s``
for company (not at all once the call is full), takes the run slot, then takes the waiting jobs
of that shape, oldest first, and runs them as one call.

Invariants:
- every job completes exactly once: with its own rows of the call's output, with ``Cancelled``
  when its cancel event was set before its call started, or with the error of its call;
- a call holds whole jobs only, at most ``max_views`` views and ``max_pixels`` N x H x W pixels,
  and always at least one job (the engine splits larger requests into jobs of ``max_views``);
- at most one thread leads a shape at a time; a leader runs calls until its own job is done,
  then hands the lead to the oldest waiting job of that shape, so no request runs other
  requests' calls after its own is done;
- jobs that arrive while a call runs or while the leader waits for the run slot join the next
  call of their shape, so under load batches form even with ``window_s`` 0.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from service.core.protocol import Cancelled

Shape = tuple[int, ...]


@dataclass(eq=False)
class _Job:
    views: np.ndarray
    cancel: threading.Event | None
    part: bool = False
    arrived: float = field(default_factory=time.monotonic)
    result: np.ndarray | None = None
    error: BaseException | None = None
    done: bool = False
    lead: bool = False

    @property
    def cancelled(self) -> bool:
        return self.cancel is not None and self.cancel.is_set()


class Batcher:
    """Runs ``run(views)`` on merged jobs of one model; ``scores`` is thread-safe."""

    def __init__(
        self,
        run: Callable[[np.ndarray, bool], np.ndarray],
        *,
        max_views: int,
        max_pixels: int,
        window_s: float = 0.0,
        slot: Callable[[], contextlib.AbstractContextManager[object]] = contextlib.nullcontext,
    ) -> None:
        self._run = run
        self.max_views = max_views
        self.max_pixels = max_pixels
        self.window_s = window_s
        self._slot = slot
        self._cond = threading.Condition()
        self._pending: defaultdict[Shape, deque[_Job]] = defaultdict(deque)
        self._led: set[Shape] = set()

    def scores(
        self, views: np.ndarray, cancel: threading.Event | None = None, *, part: bool = False
    ) -> np.ndarray:
        """``run`` of ``views`` (``(n, ...)``, n <= ``max_views``), computed in a call that may
        hold other requests' views of the same shape. ``part``: the views are one chunk of a
        larger batch. ``run(batch, merged)`` is told whether its call holds more than one job or
        a part (the engine pads those calls on CUDA)."""
        key = tuple(views.shape[1:])
        job = _Job(views, cancel, part)
        with self._cond:
            self._pending[key].append(job)
            if key not in self._led:
                self._led.add(key)
                job.lead = True
            self._cond.notify_all()
            while not job.done and not job.lead:
                self._cond.wait()
        while not job.done:
            self._lead(key, job)
        if job.error is not None:
            raise job.error
        assert job.result is not None
        return job.result

    def _lead(self, key: Shape, me: _Job) -> None:
        """Run one call of ``key``'s waiting jobs; hand the lead on once ``me`` is done."""
        deadline = me.arrived + self.window_s
        with self._cond:
            while not self._full(key) and (left := deadline - time.monotonic()) > 0:
                self._cond.wait(left)
        jobs: list[_Job] = []
        try:
            with self._slot():
                with self._cond:
                    jobs = self._take(key)
                if jobs:
                    self._call(jobs)
        finally:
            with self._cond:
                for job in jobs:
                    job.done = True
                if me.done:
                    self._hand_over(key, me)
                self._cond.notify_all()

    def _full(self, key: Shape) -> bool:
        views = sum(len(j.views) for j in self._pending[key])
        return views >= self.max_views or views * _pixels(key) >= self.max_pixels

    def _take(self, key: Shape) -> list[_Job]:
        """The oldest waiting jobs that fit in one call; cancelled ones are completed now."""
        queue, taken, views = self._pending[key], [], 0
        while queue:
            job = queue[0]
            if job.cancelled:
                queue.popleft()
                job.error, job.done = Cancelled("classification cancelled"), True
                continue
            n = views + len(job.views)
            if taken and (n > self.max_views or n * _pixels(key) > self.max_pixels):
                break
            taken.append(queue.popleft())
            views = n
        return taken

    def _call(self, jobs: list[_Job]) -> None:
        batch = jobs[0].views if len(jobs) == 1 else np.concatenate([j.views for j in jobs])
        try:
            out = self._run(batch, len(jobs) > 1 or jobs[0].part)
        except BaseException as err:  # every job of the call shares its failure
            for job in jobs:
                job.error = err
            return
        start = 0
        for job in jobs:
            job.result = out[start : start + len(job.views)]
            start += len(job.views)

    def _hand_over(self, key: Shape, me: _Job) -> None:
        me.lead = False
        queue = self._pending[key]
        if queue:
            queue[0].lead = True
        else:
            self._led.discard(key)
            del self._pending[key]


def _pixels(key: Shape) -> int:
    """H x W of one view of shape ``(C, H, W)``."""
    return int(np.prod(key[1:]))
