"""onnxruntime sessions: the provider that actually runs is reported; CUDA is never claimed
falsely; the manifest's input and output names are checked."""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from model_store import ModelStore
from service.core.engine import Engine, EngineOptions, padded_views
from service.core.protocol import Cancelled
from service.core.session_pool import SessionPool
from service.core.sessions import CPU, EngineError, cpu_run_slots, cuda_usable
from tests.service.helpers import settings_for


def test_cpu_engine_runs_dynamic_shapes(service_store: ModelStore) -> None:
    engine = Engine(service_store.read("tiny-d"), EngineOptions(device="cpu", intra_op_threads=1))
    assert engine.provider == CPU
    assert engine.name == "tiny-d" and engine.manifest.num_classes == 5
    for shape, out in [((2, 3, 224, 224), (2, 5, 1, 1)), ((1, 3, 260, 300), (1, 5, 2, 3))]:
        scores = engine.scores(np.zeros(shape, dtype=np.float32))
        assert scores.shape == out and scores.dtype == np.float32


def test_auto_reports_the_provider_that_runs(service_store: ModelStore) -> None:
    engine = Engine(service_store.read("tiny-d"), EngineOptions(device="auto", intra_op_threads=1))
    assert engine.provider == ("CUDAExecutionProvider" if cuda_usable() else CPU)


@pytest.mark.skipif(cuda_usable(), reason="this machine has CUDA")
def test_cuda_requested_without_cuda_is_an_error(service_store: ModelStore) -> None:
    with pytest.raises(EngineError, match="CUDA provider did not load"):
        Engine(service_store.read("tiny-d"), EngineOptions(device="cuda"))


def test_manifest_io_names_must_match_the_graph(service_store: ModelStore, tmp_path: Path) -> None:
    root = tmp_path / "store"
    shutil.copytree(service_store.root / "tiny-d", root / "tiny-d")
    path = root / "tiny-d" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["onnx"]["input"] = "pixels"
    path.write_text(json.dumps(manifest))
    with pytest.raises(EngineError, match="manifest says input 'pixels'"):
        Engine(ModelStore(root).read("tiny-d"), EngineOptions(device="cpu"))


def test_unloadable_onnx_is_an_engine_error(service_store: ModelStore, tmp_path: Path) -> None:
    root = tmp_path / "store"
    shutil.copytree(service_store.root / "tiny-d", root / "tiny-d")
    (root / "tiny-d" / "model.onnx").write_bytes(b"not onnx")
    path = root / "tiny-d" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["onnx"]["sha256"] = hashlib.sha256(b"not onnx").hexdigest()  # past the hash check
    path.write_text(json.dumps(manifest))
    entry = ModelStore(root).read("tiny-d")
    with pytest.raises(EngineError, match="cannot load"):
        Engine(entry, EngineOptions(device="cpu"))


def record_call_sizes(engine: Engine, calls: list[int]) -> None:
    """Append the batch size of every onnxruntime call of ``engine`` to ``calls``."""
    pool = engine._sessions
    for_shape = pool.for_shape
    pool.for_shape = lambda shape: calls.append(shape[0]) or for_shape(shape)  # type: ignore[method-assign]


def test_large_batches_run_in_chunks_of_max_batch(service_store: ModelStore) -> None:
    entry = service_store.read("tiny-d")
    whole = Engine(entry, EngineOptions(device="cpu", intra_op_threads=1, max_batch=50))
    chunked = Engine(entry, EngineOptions(device="cpu", intra_op_threads=1, max_batch=3))
    calls: list[int] = []
    record_call_sizes(chunked, calls)
    batch = np.random.default_rng(0).normal(size=(7, 3, 224, 224)).astype(np.float32)
    np.testing.assert_allclose(chunked.scores(batch), whole.scores(batch), rtol=1e-5, atol=1e-6)
    assert calls == [3, 3, 1]


def test_padded_chunks_run_a_power_of_two_of_views(service_store: ModelStore) -> None:
    """On CUDA the last chunk is padded with zeros to a power of two of views (``padded_views``),
    so that calls come in few shapes; the padding's scores are dropped."""
    entry = service_store.read("tiny-d")
    whole = Engine(entry, EngineOptions(device="cpu", intra_op_threads=1, max_batch=50))
    padded = Engine(entry, EngineOptions(device="cpu", intra_op_threads=1, max_batch=4))
    padded._pad_chunks = True  # what a CUDA engine sets
    calls: list[int] = []
    record_call_sizes(padded, calls)
    batch = np.random.default_rng(1).normal(size=(7, 3, 224, 224)).astype(np.float32)
    scores = padded.scores(batch)
    assert scores.shape == (7, 5, 1, 1)
    np.testing.assert_allclose(scores, whole.scores(batch), rtol=1e-5, atol=1e-6)
    assert calls == [4, 4]  # 4 and 3, the 3 padded to 4
    assert padded.network_views == 7


def test_padding_goes_to_the_next_power_of_two_within_the_limits() -> None:
    assert [padded_views(n, 10, 100) for n in range(1, 11)] == [1, 2, 4, 4, 8, 8, 8, 8, 10, 10]
    assert padded_views(3, 3, 100) == 3  # never beyond max_batch
    # never beyond the views that MAX_BATCH_PIXELS holds, nor below the real ones
    assert padded_views(5, 10, 6) == 6 and padded_views(5, 10, 2) == 5


def test_cpu_engine_holds_one_session_whatever_cuda_sessions_says(
    service_store: ModelStore,
) -> None:
    engine = Engine(service_store.read("tiny-d"), EngineOptions(device="cpu", cuda_sessions=4))
    assert engine.sessions == 1 and not engine._pad_chunks


class TrackedSession:
    """A session whose ``run`` takes at least ``seconds`` and records how many run at once."""

    def __init__(self, real: object, seconds: float, log: dict[str, int]) -> None:
        self.real, self.seconds, self.log = real, seconds, log
        self.lock = threading.Lock()

    def run(self, outputs: list[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        with self.lock:
            self.log["now"] += 1
            self.log["most"] = max(self.log["most"], self.log["now"])
            self.log["calls"] += 1
        try:
            time.sleep(self.seconds)
            return self.real.run(outputs, feed)  # type: ignore[attr-defined]
        finally:
            with self.lock:
                self.log["now"] -= 1


def tracked_engines(
    store: ModelStore, parallel_runs: int, log: dict[str, int], seconds: float = 0.05
) -> list[Engine]:
    engines = [
        Engine(
            store.read(name),
            EngineOptions(device="cpu", intra_op_threads=1, cpu_parallel_runs=parallel_runs),
        )
        for name in ("tiny-d", "tiny-e")
    ]
    for engine in engines:
        real = engine._sessions.for_shape((1,))
        engine._sessions = SessionPool([TrackedSession(real, seconds, log)])  # type: ignore[list-item]
    return engines


@pytest.mark.parametrize("parallel_runs", [1, 2])
def test_cpu_network_calls_take_turns_over_all_models(
    service_store: ModelStore, parallel_runs: int
) -> None:
    log = {"now": 0, "most": 0, "calls": 0}
    engines = tracked_engines(service_store, parallel_runs, log)
    batch = np.zeros((1, 3, 224, 224), dtype=np.float32)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda e: e.scores(batch), engines * 4))
    assert all(r.shape == (1, 5, 1, 1) for r in results)
    # Views of one model waiting together may share a call (``Batcher``): 8 views, <= 8 calls.
    assert sum(e.network_views for e in engines) == 8 and log["calls"] == sum(
        e.network_calls for e in engines
    )
    assert log["most"] == parallel_runs


def test_a_request_cancelled_while_waiting_for_a_run_slot_never_runs(
    service_store: ModelStore,
) -> None:
    log = {"now": 0, "most": 0, "calls": 0}
    slow, waiting = tracked_engines(service_store, 1, log, seconds=0.3)
    batch = np.zeros((1, 3, 224, 224), dtype=np.float32)
    cancel = threading.Event()
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(slow.scores, batch)
        while log["now"] == 0:
            time.sleep(0.005)
        second = pool.submit(waiting.scores, batch, cancel)
        time.sleep(0.05)
        cancel.set()
        assert first.result().shape == (1, 5, 1, 1)
        with pytest.raises(Cancelled):
            second.result()
    assert log["calls"] == 1


def test_cpu_run_slots_are_shared_per_number_allowed() -> None:
    assert cpu_run_slots(1) is cpu_run_slots(1)
    assert cpu_run_slots(2) is not cpu_run_slots(1)
    with pytest.raises(ValueError, match="at least 1"):
        cpu_run_slots(0)


def test_the_cpu_memory_arena_follows_the_setting_and_changes_no_score(
    service_store: ModelStore,
) -> None:
    batch = np.random.default_rng(2).normal(size=(2, 3, 256, 288)).astype(np.float32)
    scores = {}
    for arena in (True, False):
        options = settings_for(service_store.root, cpu_mem_arena=arena).engine_options()
        engine = Engine(service_store.read("tiny-d"), options)
        session = engine._sessions.for_shape(batch.shape)
        assert session.get_session_options().enable_cpu_mem_arena is arena
        scores[arena] = engine.scores(batch)
    np.testing.assert_array_equal(scores[True], scores[False])


def test_the_engine_keeps_no_copy_of_the_model_bytes(service_store: ModelStore) -> None:
    """onnxruntime's Python session would keep the bytes it was built from for its whole life
    (1 GiB for VGG-16 + VGG-19); the engine reads them, opens the session and lets them go."""
    entry = service_store.read("tiny-d")
    size = entry.onnx_path.stat().st_size
    tracemalloc.start()
    try:
        engine = Engine(entry, EngineOptions(device="cpu", intra_op_threads=1))
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert size > 200_000 and peak >= size
    assert held < size / 4
    assert engine.scores(np.zeros((1, 3, 224, 224), dtype=np.float32)).shape == (1, 5, 1, 1)


def test_a_cuda_engine_opens_cuda_sessions_sessions(
    service_store: ModelStore, sessions_report_cuda: list[object]
) -> None:
    opened = sessions_report_cuda
    engine = Engine(
        service_store.read("tiny-d"), EngineOptions(device="cpu", cuda_sessions=3, max_batch=2)
    )
    assert engine.provider == "CUDAExecutionProvider" and engine.sessions == 3
    assert len(opened) == 3 and engine._pad_chunks and engine._run_slots is None
    assert engine.scores(np.zeros((3, 3, 224, 224), dtype=np.float32)).shape == (3, 5, 1, 1)
