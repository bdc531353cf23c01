"""``SessionPool``: a session per input shape, least recently used first, growing one session per
new shape where it may, and counting the shapes given a session that ran another."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from service.core.session_pool import SessionPool


class Opener:
    """``open_more`` for a pool: new objects in order, failing from call ``fail_from`` on."""

    def __init__(self, fail_from: int | None = None) -> None:
        self.opened: list[object] = []
        self.fail_from = fail_from

    def __call__(self) -> object:
        if self.fail_from is not None and len(self.opened) >= self.fail_from:
            raise RuntimeError("CUDA out of memory")
        self.opened.append(object())
        return self.opened[-1]


def test_a_full_pool_keeps_a_session_per_shape_least_recently_used_first() -> None:
    a, b, c = object(), object(), object()
    pool = SessionPool([a, b, c])  # type: ignore[list-item]
    assert [pool.for_shape(s) for s in [(1,), (2,), (1,), (3,), (2,)]] == [a, b, a, c, b]
    assert pool.shape_changes == 0
    # A fourth shape takes the least recently used session: (1,)'s.
    assert pool.for_shape((4,)) is a and pool.shape_changes == 1
    assert pool.for_shape((3,)) is c and pool.for_shape((2,)) is b
    # (1,) lost its session; it takes the least recently used one now, (4,)'s.
    assert pool.for_shape((1,)) is a and pool.shape_changes == 2
    assert len(pool) == pool.size == 3


def test_a_pool_of_one_session_serves_every_shape_and_counts_the_changes() -> None:
    only = object()
    pool = SessionPool([only])  # type: ignore[list-item]
    assert all(pool.for_shape((n, 3, 224, 224)) is only for n in [1, 2, 2, 3, 1])
    assert pool.shape_changes == 3  # 1 -> 2, 2 -> 3, 3 -> 1
    pool.reset_counts()
    assert pool.shape_changes == 0


def test_a_growing_pool_opens_a_session_per_new_shape_up_to_its_size() -> None:
    first, opener = object(), Opener()
    pool = SessionPool([first], size=3, open_more=opener)  # type: ignore[list-item]
    assert len(pool) == 1 and pool.size == 3
    assert pool.for_shape((1,)) is first and not opener.opened
    assert pool.for_shape((2,)) is opener.opened[0]
    assert pool.for_shape((1,)) is first  # known shapes open nothing
    assert pool.for_shape((3,)) is opener.opened[1]
    assert len(pool) == 3 and len(opener.opened) == 2 and pool.shape_changes == 0
    # Full: a fourth shape takes the least recently used session, (2,)'s.
    assert pool.for_shape((4,)) is opener.opened[0]
    assert len(opener.opened) == 2 and pool.shape_changes == 1


def test_without_an_opener_the_size_is_the_sessions_given() -> None:
    pool = SessionPool([object()], size=8)  # type: ignore[list-item]
    assert pool.size == 1


def test_a_session_that_fails_to_open_stops_the_growing(caplog: pytest.LogCaptureFixture) -> None:
    first, opener = object(), Opener(fail_from=1)
    pool = SessionPool([first], size=4, open_more=opener)  # type: ignore[list-item]
    assert pool.for_shape((1,)) is first
    assert pool.for_shape((2,)) is opener.opened[0]
    with caplog.at_level(logging.WARNING, logger="service.core.session_pool"):
        # The third shape's session cannot open: it takes the least recently used, (1,)'s.
        assert pool.for_shape((3,)) is first
    assert "could not open another session (CUDA out of memory)" in caplog.text
    assert len(pool) == pool.size == 2 and pool.shape_changes == 1
    assert pool.for_shape((4,)) is opener.opened[0]  # no further attempt to open
    assert len(opener.opened) == 1


def test_concurrent_calls_of_a_new_shape_open_one_session() -> None:
    release = threading.Event()
    opened: list[object] = []

    def slow_open() -> object:
        release.wait(5)
        opened.append(object())
        return opened[-1]

    first = object()
    pool = SessionPool([first], size=4, open_more=slow_open)  # type: ignore[list-item]
    pool.for_shape((1,))
    with ThreadPoolExecutor(4) as threads:
        waiting = [threads.submit(pool.for_shape, (2,)) for _ in range(3)]
        # A known shape does not wait for another shape's session to open.
        assert threads.submit(pool.for_shape, (1,)).result(timeout=2) is first
        assert not any(f.done() for f in waiting)
        release.set()
        got = [f.result(timeout=5) for f in waiting]
    assert len(opened) == 1 and got == [opened[0]] * 3 and len(pool) == 2
