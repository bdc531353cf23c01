"""Sessions sharing one copy of the weights (``shared_weights.SharedWeights``): onnxruntime uses the
given values in place of the file's, the sessions answer as sessions with their own copies, and
the engine shares only where asked, on CUDA, with more than one session."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import service.core.engine as engine_module
from model_store import ModelStore
from service.core.engine import Engine, EngineOptions
from service.core.sessions import CPU, EngineError
from service.core.shared_weights import SharedWeights, shared_weights_device
from service.settings import Settings

REPO = Path(__file__).resolve().parents[2]
WEIGHT_SIDE = 4096  # one float32 initializer of 64 MiB: sessions' own copies show in RSS


def big_add_model(side: int = WEIGHT_SIDE) -> bytes:
    """``y = x + W`` with W one ``side x side`` initializer: Add has no prepacked form, so a
    session holds W once, either its own or the one it is given."""
    weight = np.arange(side * side, dtype=np.float32).reshape(side, side) / side
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "W"], ["y"])],
        "big-add",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [side, side])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [side, side])],
        initializer=[numpy_helper.from_array(weight, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def resident_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def new_options(level: str = "ORT_ENABLE_ALL") -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.enable_cpu_mem_arena = False
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    return options


def open_graph(graph: bytes, options: ort.SessionOptions) -> ort.InferenceSession:
    """As ``sessions.open_session`` does: onnxruntime's refusal is an EngineError."""
    try:
        return ort.InferenceSession(graph, options, providers=[CPU])
    except Exception as err:
        raise EngineError(str(err)) from None


def open_sessions(
    model: bytes, count: int, weights: SharedWeights | None, level: str = "ORT_ENABLE_ALL"
) -> list:
    """``count`` sessions of ``model``, or of the weights' skeleton as the engine opens them."""
    if weights is None:
        return [open_graph(model, new_options(level)) for _ in range(count)]
    open_one = weights.opener(open_graph, lambda: new_options(level))
    return [open_one() for _ in range(count)]


# In a process of its own: in the test run's, memory freed by earlier tests is reused by these
# sessions' allocations without growing VmRSS, and four own copies once grew it by three.
MEASURE_GROWTH = """
import json
from service.core.shared_weights import SharedWeights
from tests.service.test_shared_weights import big_add_model, open_sessions, resident_mib
model = big_add_model()
weights = SharedWeights(model, "cpu")
before = resident_mib()
shared = open_sessions(model, 4, weights)
after_shared = resident_mib()
own = open_sessions(model, 4, None)
print(json.dumps({"shared": after_shared - before, "own": resident_mib() - after_shared}))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmRSS from /proc")
def test_sessions_given_shared_weights_hold_no_copy_of_their_own() -> None:
    model = big_add_model()
    weight_mib = WEIGHT_SIDE * WEIGHT_SIDE * 4 / 2**20
    weights = SharedWeights(model, "cpu")
    assert weights.nbytes == WEIGHT_SIDE * WEIGHT_SIDE * 4 and list(weights.values) == ["W"]
    measured = subprocess.run(
        [sys.executable, "-c", MEASURE_GROWTH],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    growth = json.loads(measured.stdout.strip().splitlines()[-1])
    # Four own copies are 256 MiB; four sharing sessions add well under one copy.
    assert growth["own"] > 3.5 * weight_mib, growth
    assert growth["shared"] < 0.5 * weight_mib, growth
    shared = open_sessions(model, 2, weights)
    (own,) = open_sessions(model, 1, None)
    x = np.ones((WEIGHT_SIDE, WEIGHT_SIDE), dtype=np.float32)
    expected = own.run(None, {"x": x})[0]
    for session in shared:
        np.testing.assert_array_equal(session.run(None, {"x": x})[0], expected)


def test_shared_weights_of_a_vgg_answer_as_its_own(service_store: ModelStore) -> None:
    entry = service_store.read("tiny-d")
    model = entry.onnx_path.read_bytes()
    weights = SharedWeights(model, "cpu")
    initializers = onnx.load_from_string(model).graph.initializer
    assert set(weights.values) == {t.name for t in initializers}
    assert weights.nbytes == sum(numpy_helper.to_array(t).nbytes for t in initializers)
    x = np.random.default_rng(3).standard_normal((2, 3, 260, 300), dtype=np.float32)
    (expected,) = open_sessions(model, 1, None)[0].run(["scores"], {"image": x})
    for session in open_sessions(model, 3, weights):
        np.testing.assert_allclose(session.run(["scores"], {"image": x})[0], expected, atol=1e-6)


def test_the_skeleton_refers_to_the_files_own_bytes(service_store: ModelStore) -> None:
    """Every large initializer of the skeleton points at its bytes in the file: a session given
    the file alone, and no values, reads all its weights from there and answers as the file."""
    model = service_store.read("tiny-d").onnx_path.read_bytes()
    weights = SharedWeights(model, "cpu")
    assert len(weights.skeleton) < len(model) / 20, (len(weights.skeleton), len(model))
    original = {t.name: t for t in onnx.load_from_string(model).graph.initializer}
    external = 0
    for tensor in onnx.load_from_string(weights.skeleton).graph.initializer:
        raw = original[tensor.name].raw_data
        if len(raw) < SharedWeights.INLINE_BYTES:
            assert tensor.data_location != TensorProto.EXTERNAL and tensor.raw_data == raw
            continue
        where = {e.key: e.value for e in tensor.external_data}
        start, length = int(where["offset"]), int(where["length"])
        assert where["location"] == SharedWeights.FILE_NAME and length == len(raw)
        assert model[start : start + length] == raw
        external += 1
    assert external >= 10, external  # the conv and fc weights at least
    options = ort.SessionOptions()
    options.add_external_initializers_from_files_in_memory(
        [SharedWeights.FILE_NAME], [model], [len(model)]
    )
    x = np.random.default_rng(5).standard_normal((1, 3, 224, 256), dtype=np.float32)
    (expected,) = open_sessions(model, 1, None)[0].run(["scores"], {"image": x})
    session = ort.InferenceSession(weights.skeleton, options, providers=[CPU])
    np.testing.assert_array_equal(session.run(["scores"], {"image": x})[0], expected)


@pytest.mark.parametrize(
    ("level", "reads"),
    [("ORT_ENABLE_EXTENDED", False), ("ORT_ENABLE_ALL", True)],  # ALL: the CPU's NCHWc layout
)
def test_sessions_read_no_weight_unless_their_optimiser_needs_one(
    service_store: ModelStore, level: str, reads: bool
) -> None:
    """The skeleton's references resolve to an empty placeholder, so a session reads nothing;
    one whose optimiser rewrites weights (NCHWc) fails so and is given the file instead. Both
    answer as the file does."""
    model = service_store.read("tiny-d").onnx_path.read_bytes()
    weights = SharedWeights(model, "cpu")
    x = np.random.default_rng(7).standard_normal((2, 3, 256, 288), dtype=np.float32)
    (expected,) = open_sessions(model, 1, None, level)[0].run(["scores"], {"image": x})
    shared = open_sessions(model, 2, weights, level)
    assert weights.reads_weights is reads
    for session in shared:
        np.testing.assert_allclose(session.run(["scores"], {"image": x})[0], expected, atol=1e-6)


def test_the_placeholder_holds_nothing_and_goes_with_release() -> None:
    weights = SharedWeights(big_add_model(64), "cpu")
    options = ort.SessionOptions()
    weights.add_to(options, file=False)
    folder = Path(options.get_session_config_entry(SharedWeights.FOLDER_KEY))
    assert (folder / SharedWeights.FILE_NAME).stat().st_size == 0
    weights.release()
    assert not folder.exists()
    with pytest.raises(RuntimeError, match="released"):
        weights.add_to(ort.SessionOptions(), file=True)


def test_scalar_initializers_keep_their_shape(tmp_path: Path) -> None:
    """A 0-d initializer (an int8 graph's scales and zero points) stays 0-d, and a 1-d one 1-d:
    ``np.ascontiguousarray`` would make the first ``(1,)``, another shape than the graph's."""
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["flat"]),
         helper.make_node("Mul", ["flat", "gain"], ["y"])],
        "scalars",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [6])],
        initializer=[numpy_helper.from_array(np.array([6], np.int64), "shape"),
                     numpy_helper.from_array(np.array(2.0, np.float32), "gain")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    data = model.SerializeToString()
    weights = SharedWeights(data, "cpu")
    assert weights.values["gain"].shape() == [] and weights.values["shape"].shape() == [1]
    (session,) = open_sessions(data, 1, weights)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(session.run(None, {"x": x})[0], 2 * x.reshape(6))


def test_shared_weights_without_onnx_name_the_way_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx raises ImportError
    with pytest.raises(EngineError, match=r"needs the onnx package.*verydeep\[cuda\]"):
        SharedWeights(big_add_model(8), "cpu")


def test_weights_are_shared_on_cuda_only() -> None:
    assert shared_weights_device([("CUDAExecutionProvider", {}), CPU]) == "cuda"
    assert shared_weights_device(["CUDAExecutionProvider", CPU]) == "cuda"
    assert shared_weights_device([CPU]) is None


def test_a_cpu_engine_never_shares(service_store: ModelStore) -> None:
    options = EngineOptions(device="cpu", cuda_sessions=4, cuda_shared_weights=True)
    engine = Engine(service_store.read("tiny-d"), options)
    assert engine.sessions == 1 and not engine.shared_weights


@pytest.fixture
def cuda_path(sessions_report_cuda: list[object], monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine's CUDA path on CPU sessions: they report CUDA, and weights go to the CPU."""
    monkeypatch.setattr(engine_module, "shared_weights_device", lambda providers: "cpu")


def test_a_cuda_engine_shares_its_weights_over_its_sessions(
    service_store: ModelStore, cuda_path: None
) -> None:
    entry = service_store.read("tiny-d")
    plain = Engine(entry, EngineOptions(device="cpu", cuda_sessions=3, max_batch=2))
    shared = Engine(
        entry, EngineOptions(device="cpu", cuda_sessions=3, max_batch=2, cuda_shared_weights=True)
    )
    assert not plain.shared_weights and shared.shared_weights and plain.sessions == 3
    # These CPU sessions lay convolutions out as NCHWc, which reads the weights: given the file,
    # kept for the sessions that open as new shapes come.
    assert shared.shared_weights_read and not plain.shared_weights_read
    assert shared.sessions == 1 and shared.session_limit == 3
    shapes = [(2, 3, 224, 256), (1, 3, 256, 224), (2, 3, 288, 288)]
    for count, shape in zip([1, 2, 3], shapes, strict=True):
        x = np.random.default_rng(sum(shape)).standard_normal(shape, dtype=np.float32)
        np.testing.assert_allclose(shared.scores(x), plain.scores(x), atol=1e-5)
        assert shared.sessions == count


def test_sessions_that_read_nothing_open_one_per_new_shape(
    service_store: ModelStore, cuda_path: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the sessions read no weight (no NCHWc layout: ORT_ENABLE_EXTENDED), the engine
    opens one session now and one per new input shape, up to ``cuda_sessions``."""
    import service.core.sessions as sessions_module

    real_setup = sessions_module.session_setup

    def extended(*args: object, **kwargs: object) -> tuple[ort.SessionOptions, object]:
        options, providers = real_setup(*args, **kwargs)  # type: ignore[arg-type]
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        return options, providers

    monkeypatch.setattr(sessions_module, "session_setup", extended)
    entry = service_store.read("tiny-d")
    plain = Engine(entry, EngineOptions(device="cpu", cuda_sessions=3, max_batch=2))
    shared = Engine(
        entry, EngineOptions(device="cpu", cuda_sessions=3, max_batch=2, cuda_shared_weights=True)
    )
    assert plain.sessions == 3 and plain.session_limit == 3
    assert shared.shared_weights and not shared.shared_weights_read
    assert shared.sessions == 1 and shared.session_limit == 3
    shapes = [(1, 3, 224, 256), (1, 3, 256, 224), (2, 3, 288, 288), (1, 3, 224, 256)]
    for count, shape in zip([1, 2, 3, 3], shapes, strict=True):
        x = np.random.default_rng(sum(shape)).standard_normal(shape, dtype=np.float32)
        np.testing.assert_allclose(shared.scores(x), plain.scores(x), atol=1e-5)
        assert shared.sessions == count
    assert shared.shape_changes == 0
    shared.scores(np.zeros((1, 3, 320, 224), dtype=np.float32))  # a fourth shape: full
    assert shared.sessions == 3 and shared.shape_changes == 1


def test_one_session_needs_no_shared_copy(service_store: ModelStore, cuda_path: None) -> None:
    options = EngineOptions(device="cpu", cuda_sessions=1, cuda_shared_weights=True)
    assert not Engine(service_store.read("tiny-d"), options).shared_weights


def test_auto_falls_back_to_own_copies_when_the_weights_cannot_be_placed(
    service_store: ModelStore,
    cuda_path: None,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)
    entry = service_store.read("tiny-d")
    options = EngineOptions(device="auto", cuda_sessions=2, cuda_shared_weights=True)
    with caplog.at_level(logging.WARNING, logger="service.core.engine"):
        engine = Engine(entry, options)
    assert not engine.shared_weights and engine.sessions == 2
    assert "sessions keep their own weights" in caplog.text
    with pytest.raises(EngineError, match="needs the onnx package"):
        Engine(entry, EngineOptions(device="cuda", cuda_sessions=2, cuda_shared_weights=True))


def test_the_setting_reaches_the_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VERYDEEP_CUDA_SHARED_WEIGHTS", "true")
    assert Settings().engine_options().cuda_shared_weights is True
    monkeypatch.delenv("VERYDEEP_CUDA_SHARED_WEIGHTS")
    assert Settings().engine_options().cuda_shared_weights is False
