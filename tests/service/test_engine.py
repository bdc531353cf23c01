"""onnxruntime sessions: the provider that actually runs is reported; CUDA is never claimed
falsely; the manifest's input and output names are checked."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from model_store import ModelStore
from service.engine import CPU, Engine, EngineError, cuda_usable


def test_cpu_engine_runs_dynamic_shapes(service_store: ModelStore) -> None:
    engine = Engine(service_store.read("tiny-d"), device="cpu", intra_op_threads=1)
    assert engine.provider == CPU
    assert engine.name == "tiny-d" and engine.manifest.num_classes == 5
    for shape, out in [((2, 3, 224, 224), (2, 5, 1, 1)), ((1, 3, 260, 300), (1, 5, 2, 3))]:
        scores = engine.scores(np.zeros(shape, dtype=np.float32))
        assert scores.shape == out and scores.dtype == np.float32


def test_auto_reports_the_provider_that_runs(service_store: ModelStore) -> None:
    engine = Engine(service_store.read("tiny-d"), device="auto", intra_op_threads=1)
    assert engine.provider == ("CUDAExecutionProvider" if cuda_usable() else CPU)


@pytest.mark.skipif(cuda_usable(), reason="this machine has CUDA")
def test_cuda_requested_without_cuda_is_an_error(service_store: ModelStore) -> None:
    with pytest.raises(EngineError, match="CUDA provider did not load"):
        Engine(service_store.read("tiny-d"), device="cuda")


def test_manifest_io_names_must_match_the_graph(service_store: ModelStore, tmp_path: Path) -> None:
    root = tmp_path / "store"
    shutil.copytree(service_store.root / "tiny-d", root / "tiny-d")
    path = root / "tiny-d" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["onnx"]["input"] = "pixels"
    path.write_text(json.dumps(manifest))
    with pytest.raises(EngineError, match="manifest says input 'pixels'"):
        Engine(ModelStore(root).read("tiny-d"), device="cpu")


def test_unloadable_onnx_is_an_engine_error(service_store: ModelStore, tmp_path: Path) -> None:
    root = tmp_path / "store"
    shutil.copytree(service_store.root / "tiny-d", root / "tiny-d")
    (root / "tiny-d" / "model.onnx").write_bytes(b"not onnx")
    entry = ModelStore(root).read("tiny-d", verify=False)
    with pytest.raises(EngineError, match="cannot load"):
        Engine(entry, device="cpu")


def test_large_batches_run_in_chunks_of_max_batch(service_store: ModelStore) -> None:
    entry = service_store.read("tiny-d")
    whole = Engine(entry, device="cpu", intra_op_threads=1, max_batch=50)
    chunked = Engine(entry, device="cpu", intra_op_threads=1, max_batch=3)
    calls: list[int] = []
    run = chunked._run
    chunked._run = lambda b: calls.append(len(b)) or run(b)  # type: ignore[method-assign]
    batch = np.random.default_rng(0).normal(size=(7, 3, 224, 224)).astype(np.float32)
    np.testing.assert_allclose(chunked.scores(batch), whole.scores(batch), rtol=1e-5, atol=1e-6)
    assert calls == [3, 3, 1]
