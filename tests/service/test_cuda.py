"""The CUDA path, for real: these run only where onnxruntime's CUDA provider loads (a lent GPU
machine, see README "Benchmarks"); elsewhere they are skipped, and say why."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from model_store import ModelStore
from service.core.sessions import CUDA, cuda_usable
from service.http.app import create_app
from tests.service.helpers import TestClient, full_and_half_store, settings_for

pytestmark = pytest.mark.skipif(
    not cuda_usable(), reason="needs an NVIDIA GPU and onnxruntime-gpu's CUDA provider"
)

POSTERIOR_TOLERANCE = {"float32": 1e-3, "float16": 2e-2}
"""Largest posterior difference from the CPU provider's float32 answer: float32 convolutions on
the GPU may run in TF32 (10-bit mantissa), float16 ones keep 11 bits."""


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> ModelStore:
    return full_and_half_store(tmp_path_factory.mktemp("cuda") / "store", seed=31)


def png(width: int, height: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def classify(client: TestClient, model: str, data: bytes, **params: str):
    return client.post(
        "/classify",
        params={"model": model, "top_k": "5", **params},
        files={"image": ("x.png", data, "image/png")},
    )


def test_models_run_on_cuda_and_agree_with_the_cpu(store: ModelStore) -> None:
    data = png(300, 260)
    params = {"method": "combined", "scales": "224,256,320"}
    answers = {}
    for device in ("cuda", "cpu"):
        with TestClient(create_app(settings_for(store.root, device=device))) as client:
            listed = {m["name"]: m for m in client.get("/models").json()["models"]}
            if device == "cuda":
                assert {m["provider"] for m in listed.values()} == {CUDA}
                assert listed["half"]["onnx"]["dtype"] == "float16"
            for name in ("full", "half"):
                r = classify(client, name, data, **params)
                assert r.status_code == 200, r.text
                answers[(device, name)] = {
                    p["index"]: p["probability"] for p in r.json()["predictions"]
                }
    reference = answers[("cpu", "full")]
    for name, dtype in (("full", "float32"), ("half", "float16")):
        served = answers[("cuda", name)]
        assert max(served, key=served.get) == max(reference, key=reference.get)
        for index, probability in reference.items():
            assert served[index] == pytest.approx(probability, abs=POSTERIOR_TOLERANCE[dtype])


def test_out_of_gpu_memory_is_a_503_and_the_service_stays_up(store: ModelStore) -> None:
    """With the CUDA arena capped at 16 MiB, a 1024-pixel scale cannot fit (the first conv's
    output of a flip pair alone is 2 x 4 x 1024 x 1365 floats, 45 MB): onnxruntime's allocation
    fails, the request gets a JSON 503, and the next small request is answered."""
    settings = settings_for(store.root, device="cuda", cuda_mem_limit=16 * 2**20, warmup=False)
    with TestClient(create_app(settings)) as client:
        small = png(300, 260)
        assert classify(client, "full", small, scales="224").status_code == 200
        big = classify(client, "full", png(1365, 1024, seed=1), scales="1024")
        assert big.status_code == 503, big.text
        assert big.json()["error"]["code"] == "inference_failed"
        assert "Retry-After" in big.headers
        assert client.get("/healthz").status_code == 200
        again = classify(client, "full", small, scales="224")
        assert again.status_code == 200, again.text


def test_cuda_engine_keeps_a_session_per_shape_and_pads_chunks(store: ModelStore) -> None:
    from service.core.engine import Engine, EngineOptions

    engine = Engine(store.read("full"), EngineOptions(device="cuda", cuda_sessions=3, max_batch=4))
    reference = Engine(store.read("full"), EngineOptions(device="cpu"))
    assert engine.provider == CUDA and engine.sessions == 3 and engine._pad_chunks
    rng = np.random.default_rng(2)
    batches = [
        rng.standard_normal(shape, dtype=np.float32)
        for shape in [(2, 3, 256, 320), (6, 3, 224, 224), (2, 3, 288, 384), (2, 3, 256, 320)]
    ]
    for batch in batches:
        scores = engine.scores(batch)
        assert scores.shape[0] == len(batch)
        np.testing.assert_allclose(scores, reference.scores(batch), rtol=2e-2, atol=2e-2)


def test_int8_on_cuda_is_measured_against_the_cpu(tmp_path_factory: pytest.TempPathFactory) -> None:
    """An int8 entry on CUDA (docs/serving.md, "int8 models"): it loads, says so in /models, and
    answers like the CPU provider's int8 within the export's posterior tolerance. A failure here
    is the measurement that the CUDA int8 path needs another treatment."""
    from tests.service.helpers import variants_store
    from training import quantize
    from training.shapes import write_shapes

    root = tmp_path_factory.mktemp("cuda-int8")
    calibration = write_shapes(root / "cal", 2, seed=5, workers=1, progress=False)
    int8 = variants_store(root / "store", 31, {"q": "int8"}, calibration)
    data = png(300, 260)
    answers = {}
    for device in ("cuda", "cpu"):
        with TestClient(create_app(settings_for(int8.root, device=device))) as client:
            (listed,) = client.get("/models").json()["models"]
            assert listed["onnx"]["dtype"] == "int8"
            if device == "cuda":
                assert listed["provider"] == CUDA and "not measured" in listed["int8_note"]
            r = classify(client, "q", data, scales="224,256")
            assert r.status_code == 200, r.text
            answers[device] = {p["index"]: p["probability"] for p in r.json()["predictions"]}
    assert next(iter(answers["cuda"])) == next(iter(answers["cpu"]))
    for index, probability in answers["cpu"].items():
        assert answers["cuda"][index] == pytest.approx(probability, abs=quantize.MAX_POSTERIOR_DIFF)


def test_cuda_sessions_sharing_weights_answer_alike(store: ModelStore) -> None:
    """VERYDEEP_CUDA_SHARED_WEIGHTS (docs/gpu.md, "Sessions sharing one copy of the weights"):
    four CUDA sessions on one copy, opened one per new shape, answer as four with their own."""
    from service.core.engine import Engine, EngineOptions

    entry = store.read("full")
    own = Engine(entry, EngineOptions(device="cuda", cuda_sessions=4, max_batch=4))
    options = EngineOptions(device="cuda", cuda_sessions=4, max_batch=4, cuda_shared_weights=True)
    shared = Engine(entry, options)
    assert shared.shared_weights and shared.provider == CUDA and shared.session_limit == 4
    assert shared.sessions == 1
    rng = np.random.default_rng(4)
    for shape in [(2, 3, 256, 320), (2, 3, 320, 256), (1, 3, 288, 384), (2, 3, 224, 448)]:
        batch = rng.standard_normal(shape, dtype=np.float32)
        np.testing.assert_allclose(shared.scores(batch), own.scores(batch), rtol=1e-4, atol=1e-4)
    assert shared.sessions == 4 and shared.shape_changes == 0


def test_cuda_sessions_sharing_weights_hold_one_copy_on_the_gpu() -> None:
    """Four CUDA sessions of a graph with one 256 MiB initializer: with their own copies they
    take four on the GPU, given ``SharedWeights`` one (nvidia-smi's figure for the GPU, so the
    comparison is of differences: each session's own handles and workspace are in both)."""
    import subprocess

    import onnxruntime as ort

    from service.core.sessions import session_setup
    from service.core.shared_weights import SharedWeights
    from tests.service.test_shared_weights import big_add_model

    def used_mib() -> int:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        return int(out.split()[0])

    side = 8192
    model, weight_mib = big_add_model(side), side * side * 4 / 2**20

    def four(weights: SharedWeights | None) -> tuple[list, int]:
        options, providers = session_setup("cuda")
        before = used_mib()
        if weights is None:
            made = [ort.InferenceSession(model, options, providers=providers) for _ in range(4)]
        else:  # as the engine opens them: the skeleton, reading no weight
            open_one = weights.opener(
                lambda graph, opts: ort.InferenceSession(graph, opts, providers=providers),
                lambda: session_setup("cuda")[0],
            )
            made = [open_one() for _ in range(4)]
            assert not weights.reads_weights
        assert all(s.get_providers()[0] == CUDA for s in made)
        return made, used_mib() - before

    own, own_mib = four(None)
    before = used_mib()
    weights = SharedWeights(model, "cuda")
    placed_mib = used_mib() - before
    shared, shared_mib = four(weights)
    assert placed_mib >= 0.9 * weight_mib, placed_mib
    assert own_mib - shared_mib > 2.5 * weight_mib, (own_mib, shared_mib, weight_mib)
    x = np.ones((side, side), dtype=np.float32)
    np.testing.assert_array_equal(shared[0].run(None, {"x": x})[0], own[0].run(None, {"x": x})[0])


def test_the_preprocessing_graph_on_cuda_follows_pillow() -> None:
    """``VERYDEEP_PREPROCESS=graph`` on CUDA (docs/gpu.md, "Preprocessing on the GPU"): the
    graph on the CUDA provider gives Pillow's network input within the CPU provider's tolerance
    (2 levels; more than half a level off on at most 2% of values), and the demo ensemble's
    /classify answers as with Pillow. A failure here is the measurement that CUDA's Resize
    rounds otherwise."""
    import io

    from bench.images import photo
    from model_store.imaging import rescale, to_input
    from service.core.preprocess_graph import PreprocessGraph
    from service.core.sessions import session_setup
    from tests.service.helpers import ROOT
    from tests.service.test_preprocess_graph import MAX_FRACTION_OFF, MAX_LEVELS, levels_off

    options, providers = session_setup("cuda")
    graph = PreprocessGraph(providers, options)
    store = ModelStore(ROOT / "model_store")
    p = store.read("demo-d").manifest.preprocessing
    for i, size in enumerate([(640, 480), (1281, 719), (2520, 1080)]):
        image = photo(*size, seed=i)
        for q in (224, 256, 384):
            full = graph.rescaled_input(image, q, p)
            off = levels_off(full, to_input(rescale(image, q), p), p)
            assert off.max() <= MAX_LEVELS["uint8"], (size, q, off.max())
            assert (off > 0.5).mean() <= MAX_FRACTION_OFF["uint8"], (size, q)
            # The float16 output, cast by CUDA's Cast, rounds as numpy's cast does.
            half = graph.rescaled_input(image, q, p, "float16")
            assert np.array_equal(half.view(np.uint16), full.astype(np.float16).view(np.uint16))
    buffer = io.BytesIO()
    photo(1281, 719, seed=1).save(buffer, "JPEG", quality=90)
    answers = {}
    for preprocess in ("pillow", "graph"):
        settings = settings_for(ROOT / "model_store", device="cuda", preprocess=preprocess)
        with TestClient(create_app(settings)) as client:
            r = classify(client, "demo-de", buffer.getvalue())
            assert r.status_code == 200, r.text
            answers[preprocess] = r.json()["predictions"]
    assert [a["index"] for a in answers["graph"]] == [a["index"] for a in answers["pillow"]]
    for a, b in zip(answers["graph"], answers["pillow"], strict=True):
        assert a["probability"] == pytest.approx(b["probability"], abs=1e-2)
