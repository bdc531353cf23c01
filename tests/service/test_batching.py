"""Batches across requests: views of one shape from requests in flight together share a call,
within the limits, and every request gets exactly its own answer, as if it had run alone."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from model_store import ModelStore
from service.core.batching import Batcher
from service.core.engine import Engine, EngineOptions
from service.core.protocol import Cancelled
from service.http.app import create_app
from tests.service.helpers import TestClient, encode, sample_image, settings_for


class Recorder:
    """A network that doubles its input, records each call's batch size and running thread, and
    takes ``seconds`` per call."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.seconds = seconds
        self.calls: list[tuple[int, bool, str]] = []
        self.lock = threading.Lock()

    def __call__(self, batch: np.ndarray, merged: bool) -> np.ndarray:
        with self.lock:
            self.calls.append((len(batch), merged, threading.current_thread().name))
        time.sleep(self.seconds)
        return batch * 2


def views(n: int, value: float, side: int = 4) -> np.ndarray:
    return np.full((n, 3, side, side), value, dtype=np.float32)


def submit_together(batcher: Batcher, jobs: list[np.ndarray]) -> list[np.ndarray]:
    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = []
        for job in jobs:
            futures.append(pool.submit(batcher.scores, job))
            time.sleep(0.01)  # in order, within the window
        return [f.result() for f in futures]


def test_jobs_within_the_window_share_one_call_and_get_their_own_rows() -> None:
    run = Recorder()
    batcher = Batcher(run, max_views=10, max_pixels=10**6, window_s=0.3)
    jobs = [views(2, 1.0), views(1, 2.0), views(2, 3.0)]
    results = submit_together(batcher, jobs)
    assert [(n, merged) for n, merged, _ in run.calls] == [(5, True)]
    for job, result in zip(jobs, results, strict=True):
        np.testing.assert_array_equal(result, job * 2)


def test_calls_stay_within_max_views_and_max_pixels_and_never_split_a_job() -> None:
    run = Recorder()
    batcher = Batcher(run, max_views=4, max_pixels=10**6, window_s=0.3)
    submit_together(batcher, [views(3, 1.0), views(2, 2.0), views(1, 3.0)])
    assert sorted(n for n, _, _ in run.calls) == [2, 4] or [n for n, _, _ in run.calls] == [3, 3]
    assert all(n <= 4 for n, _, _ in run.calls)

    run = Recorder()
    pixels = 3 * 4 * 4  # H x W of one view is 16; 3 views' worth
    batcher = Batcher(run, max_views=10, max_pixels=pixels, window_s=0.3)
    submit_together(batcher, [views(2, 1.0), views(2, 2.0)])
    assert [n for n, _, _ in run.calls] == [2, 2]


def test_a_full_call_does_not_wait_for_the_window() -> None:
    run = Recorder()
    batcher = Batcher(run, max_views=3, max_pixels=10**6, window_s=30.0)
    started = time.monotonic()
    submit_together(batcher, [views(2, 1.0), views(1, 2.0)])
    assert time.monotonic() - started < 5 and [n for n, _, _ in run.calls] == [3]


def test_shapes_never_share_a_call() -> None:
    run = Recorder()
    batcher = Batcher(run, max_views=10, max_pixels=10**6, window_s=0.2)
    results = submit_together(batcher, [views(1, 1.0, side=4), views(1, 2.0, side=5)])
    assert sorted(n for n, _, _ in run.calls) == [1, 1]
    assert [r.shape[-1] for r in results] == [4, 5]


def test_a_lone_request_runs_alone_and_unmerged_without_waiting() -> None:
    run = Recorder()
    batcher = Batcher(run, max_views=10, max_pixels=10**6, window_s=0.0)
    np.testing.assert_array_equal(batcher.scores(views(2, 1.5)), views(2, 3.0))
    assert [(n, merged) for n, merged, _ in run.calls] == [(2, False)]
    batcher.scores(views(2, 1.5), part=True)  # one chunk of a larger batch
    assert run.calls[-1][:2] == (2, True)


def test_jobs_queued_behind_a_running_call_share_the_next_one_with_no_window() -> None:
    run = Recorder(seconds=0.3)
    batcher = Batcher(run, max_views=10, max_pixels=10**6, window_s=0.0)
    results = submit_together(batcher, [views(1, 1.0), views(1, 2.0), views(1, 3.0)])
    assert [n for n, _, _ in run.calls] == [1, 2]
    np.testing.assert_array_equal(results[2], views(1, 6.0))


def test_a_leader_never_runs_calls_after_its_own_job_is_done() -> None:
    run = Recorder(seconds=0.1)
    batcher = Batcher(run, max_views=1, max_pixels=10**6, window_s=0.0)
    done: dict[str, float] = {}

    def job(value: float) -> None:
        batcher.scores(views(1, value))
        done[threading.current_thread().name] = time.monotonic()

    threads = [threading.Thread(target=job, args=(v,), name=f"r{v:g}") for v in (1, 2, 3, 4)]
    for t in threads:
        t.start()
        time.sleep(0.01)
    for t in threads:
        t.join(10)
    assert len(run.calls) == 4
    assert sorted(name for _, _, name in run.calls) == ["r1", "r2", "r3", "r4"]


def test_a_cancelled_job_is_dropped_and_the_others_run() -> None:
    run = Recorder(seconds=0.3)
    batcher = Batcher(run, max_views=10, max_pixels=10**6, window_s=0.0)
    cancel = threading.Event()
    with ThreadPoolExecutor(3) as pool:
        first = pool.submit(batcher.scores, views(1, 1.0))
        time.sleep(0.05)
        dropped = pool.submit(batcher.scores, views(1, 2.0), cancel)
        kept = pool.submit(batcher.scores, views(1, 3.0))
        time.sleep(0.05)
        cancel.set()
        first.result()
        np.testing.assert_array_equal(kept.result(), views(1, 6.0))
        with pytest.raises(Cancelled):
            dropped.result()
    assert [n for n, _, _ in run.calls] == [1, 1]


def test_every_job_of_a_failed_call_gets_its_error() -> None:
    def failing(batch: np.ndarray, merged: bool) -> np.ndarray:
        time.sleep(0.05)
        raise RuntimeError("device lost")

    batcher = Batcher(failing, max_views=10, max_pixels=10**6, window_s=0.2)
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(batcher.scores, views(1, float(v))) for v in (1, 2)]
        for future in futures:
            with pytest.raises(RuntimeError, match="device lost"):
                future.result()
    np.testing.assert_array_equal(  # and the batcher still works
        Batcher(Recorder(), max_views=2, max_pixels=10**6).scores(views(1, 1.0)), views(1, 2.0)
    )


def test_merged_engine_calls_answer_as_lone_calls(service_store: ModelStore) -> None:
    entry = service_store.read("tiny-d")
    options = EngineOptions(device="cpu", intra_op_threads=1, batch_window_ms=300)
    merged = Engine(entry, options)
    lone = Engine(entry, EngineOptions(device="cpu", intra_op_threads=1))
    rng = np.random.default_rng(3)
    batches = [rng.normal(size=(2, 3, 256, 320)).astype(np.float32) for _ in range(3)]
    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(merged.scores, b) for b in batches]
        results = [f.result() for f in futures]
    assert merged.network_calls == 1 and merged.network_views == 6
    for batch, result in zip(batches, results, strict=True):
        np.testing.assert_allclose(result, lone.scores(batch), rtol=1e-5, atol=1e-5)


def test_classify_answers_do_not_depend_on_who_shared_the_call(
    service_store: ModelStore,
) -> None:
    photos = [encode(sample_image(320, 240, seed=s), "PNG") for s in range(4)]
    settings = settings_for(service_store.root, batch_window_ms=300, max_concurrency=4)
    with TestClient(create_app(settings)) as client:
        alone = [classify(client, photo) for photo in photos]
        with ThreadPoolExecutor(4) as pool:
            together = list(pool.map(lambda p: classify(client, p), photos))
        text = client.get("/metrics").text
    for a, b in zip(alone, together, strict=True):
        assert [p["index"] for p in a] == [p["index"] for p in b]
        np.testing.assert_allclose(
            [p["probability"] for p in a], [p["probability"] for p in b], rtol=1e-5, atol=1e-7
        )
    calls = metric(text, 'verydeep_network_calls_total{model="tiny-d"}')
    network_views = metric(text, 'verydeep_network_views_total{model="tiny-d"}')
    assert network_views == 8 * 3 * 2  # 8 requests, 3 test scales, a flip pair each
    assert calls < 8 * 3  # some requests shared their calls
    # One CPU session runs every shape: the three scales' shapes in turn change it.
    assert metric(text, 'verydeep_sessions{model="tiny-d"}') == 1
    assert 8 <= metric(text, 'verydeep_session_shape_changes_total{model="tiny-d"}') <= calls


def classify(client: TestClient, photo: bytes) -> list[dict]:
    response = client.post(
        "/classify",
        params={"model": "tiny-d", "top_k": 3},
        content=photo,
        headers={"content-type": "image/png"},
    )
    assert response.status_code == 200, response.text
    return response.json()["predictions"]


def metric(text: str, name: str) -> float:
    (line,) = [line for line in text.splitlines() if line.startswith(name + " ")]
    return float(line.split()[-1])
