"""Faults: store files corrupted, truncated or swapped after start-up; onnxruntime failing during
a request; memory running out. The service never answers wrongly, /readyz and /models stay
truthful, the failed request gets a JSON 503 without internals, and the next one succeeds.

Decided behaviour for the store: sessions are built at start-up from the bytes whose sha256 was
checked, and live in memory; the files are never read again. A file changed afterwards changes
no answer; /readyz (still 200) and /models list it under ``changed_on_disk``; a restart verifies
the store again and skips the entry.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from model_store import ModelStore
from service.core import protocol
from service.core.registry import Registry
from service.core.session_pool import SessionPool
from service.http.app import create_app
from tests.service.helpers import TestClient, encode, sample_image, settings_for


def classify(client: TestClient, png: bytes, model: str) -> dict:
    response = client.post(
        "/classify",
        params={"model": model, "scales": "224,256", "top_k": 5},
        content=png,
        headers={"content-type": "image/png"},
    )
    assert response.status_code == 200, response.text
    return response.json()


def posterior(body: dict) -> np.ndarray:
    out = np.zeros(5)
    for p in body["predictions"]:
        out[p["index"]] = p["probability"]
    return out


@pytest.fixture
def store_copy(service_store: ModelStore, tmp_path: Path) -> ModelStore:
    shutil.copytree(service_store.root, tmp_path / "store")
    return ModelStore(tmp_path / "store")


def test_store_files_changed_after_start_up(
    store_copy: ModelStore, service_store: ModelStore, png: bytes
) -> None:
    root = store_copy.root
    registry = Registry(settings_for(root, warmup=False))
    registry.load()
    with TestClient(create_app(registry.settings, registry=registry)) as client:
        models = ["tiny-d", "tiny-e", "tiny-a-bgr"]
        before = {m: posterior(classify(client, png, m)) for m in models}
        assert client.get("/readyz").json()["changed_on_disk"] == {}

        # corrupted in place, truncated, swapped for another (valid) model's file
        corrupt = root / "tiny-d" / "model.onnx"
        data = bytearray(corrupt.read_bytes())
        data[len(data) // 2 : len(data) // 2 + 4096] = bytes(4096)
        corrupt.write_bytes(bytes(data))
        truncated = root / "tiny-e" / "model.onnx"
        truncated.write_bytes(truncated.read_bytes()[:1000])
        replacement = root / "tiny-a-bgr" / "new.onnx"
        shutil.copyfile(service_store.root / "tiny-d" / "model.onnx", replacement)
        replacement.replace(root / "tiny-a-bgr" / "model.onnx")  # atomic swap: a new inode

        after = {m: posterior(classify(client, png, m)) for m in models}
        for m in models:  # bit for bit: the sessions in memory are the verified ones
            np.testing.assert_array_equal(after[m], before[m])

        ready = client.get("/readyz")
        assert ready.status_code == 200
        body = ready.json()
        assert body["ready"] is True
        assert body["changed_on_disk"] == {
            "tiny-a-bgr": "model.onnx was replaced by another file",
            "tiny-d": "model.onnx was modified",
            "tiny-e": "model.onnx was modified",
        }
        assert "changed on disk" in body["problem"] and "restart" in body["problem"]
        listed = client.get("/models").json()
        assert listed["changed_on_disk"] == body["changed_on_disk"]
        assert {m["name"] for m in listed["models"]} == set(models)

        (root / "tiny-e" / "model.onnx").unlink()
        gone = client.get("/readyz").json()["changed_on_disk"]["tiny-e"]
        assert "no longer readable" in gone

    # A restart verifies again: every changed entry is skipped with its reason.
    restarted = Registry(settings_for(root, warmup=False))
    restarted.load()
    skipped = {s.name: s.reason for s in restarted.skipped}
    assert "sha256 mismatch" in skipped["tiny-d"] and "sha256 mismatch" in skipped["tiny-a-bgr"]
    assert "tiny-e" in skipped
    assert restarted.state == "failed" and not restarted.models


def test_file_swapped_between_check_and_load_is_not_served(
    store_copy: ModelStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sha256 is checked on the very bytes the session is built from: a file swapped after
    the manifest was read cannot slip in (the old code hashed the file, then opened it again)."""
    root = store_copy.root
    real_read = store_copy.read

    def read_then_swap(self: ModelStore, name: str, *, verify: bool = True):
        entry = real_read(name, verify=verify)
        if name == "tiny-d":
            shutil.copyfile(root / "tiny-e" / "model.onnx", root / "tiny-d" / "model.onnx")
        return entry

    monkeypatch.setattr(ModelStore, "read", read_then_swap)
    registry = Registry(settings_for(root, warmup=False))
    registry.load()
    assert "tiny-d" not in registry.models
    reasons = {s.name: s.reason for s in registry.skipped}
    assert "sha256 mismatch" in reasons["tiny-d"]


class FailingSession:
    """An onnxruntime session whose next ``failures`` runs raise as onnxruntime does."""

    def __init__(self, session: ort.InferenceSession, failures: int, error: Exception) -> None:
        self._session = session
        self.failures = failures
        self.error = error

    def run(self, *args: object, **kwargs: object):
        if self.failures > 0:
            self.failures -= 1
            raise self.error
        return self._session.run(*args, **kwargs)

    def __getattr__(self, name: str) -> object:
        return getattr(self._session, name)


ORT_ERRORS = {
    "cuda-oom": ort.capi.onnxruntime_pybind11_state.RuntimeException(
        "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : CUDA failure 2: out of memory ; "
        "GPU=0 ; hostname=secret-host ; file=/opt/secret/cuda_call.cc"
    ),
    "fail": ort.capi.onnxruntime_pybind11_state.Fail("[ONNXRuntimeError] : 1 : FAIL : secret"),
    "plain": RuntimeError("secret internals"),
}


@pytest.mark.parametrize("error", ORT_ERRORS, ids=list(ORT_ERRORS))
def test_onnxruntime_failure_is_a_503_and_the_next_request_succeeds(
    make_client: Callable, registry: Registry, png: bytes, error: str, monkeypatch
) -> None:
    client = make_client(retry_after=4)
    engine = registry.models["tiny-e"]
    failing = FailingSession(engine._sessions.first, 1, ORT_ERRORS[error])
    monkeypatch.setattr(engine, "_sessions", SessionPool([failing]))  # type: ignore[list-item]
    failed = client.post(
        "/classify",
        params={"model": "tiny-de", "scales": "224"},
        content=png,
        headers={"content-type": "image/png"},
    )
    assert failed.status_code == 503, failed.text
    assert failed.headers["retry-after"] == "4"
    body = failed.json()
    assert body == {
        "error": {
            "code": "inference_failed",
            "message": "inference failed on model 'tiny-e'; the request can be retried",
        }
    }
    assert "secret" not in failed.text
    ok = client.post(
        "/classify",
        params={"model": "tiny-de", "scales": "224"},
        content=png,
        headers={"content-type": "image/png"},
    )
    assert ok.status_code == 200, ok.text
    metrics = client.get("/metrics").text
    assert "verydeep_classify_in_flight 0.0" in metrics
    assert 'verydeep_requests_total{route="/classify",status="503"} 1.0' in metrics
    assert client.get("/readyz").status_code == 200


def test_out_of_memory_is_a_503(make_client: Callable, png: bytes, monkeypatch) -> None:
    real = protocol.classify
    calls = {"n": 0}

    def once_out_of_memory(*args: object, **kwargs: object):
        calls["n"] += 1
        if calls["n"] == 1:
            raise MemoryError("Unable to allocate 64.0 GiB for an array")
        return real(*args, **kwargs)

    monkeypatch.setattr(protocol, "classify", once_out_of_memory)
    client = make_client()
    first = client.post("/classify", content=png, headers={"content-type": "image/png"})
    assert first.status_code == 503 and first.json()["error"]["code"] == "out_of_memory"
    assert "GiB" not in first.text and first.headers["retry-after"] == "1"
    second = client.post("/classify", content=png, headers={"content-type": "image/png"})
    assert second.status_code == 200


def test_a_decode_crash_is_a_bare_500_and_the_service_goes_on(
    registry: Registry, png: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unforeseen exception (a bug) is a 500 with no internals; the slot is released."""
    from service.core import classify

    def broken(*args: object, **kwargs: object):
        raise ZeroDivisionError("secret internals")

    app = create_app(
        settings_for(registry.settings.model_store, max_concurrency=1), registry=registry
    )
    with TestClient(app, raise_server_exceptions=False) as client:
        monkeypatch.setattr(classify, "decode", broken)
        response = client.post("/classify", content=png, headers={"content-type": "image/png"})
        assert response.status_code == 500
        assert response.json() == {
            "error": {"code": "internal_error", "message": "internal server error"}
        }
        monkeypatch.undo()
        for _ in range(3):  # max_concurrency=1: a leaked slot would make these 503
            ok = client.post("/classify", content=png, headers={"content-type": "image/png"})
            assert ok.status_code == 200


def test_huge_views_are_refused_before_inference(make_client: Callable, monkeypatch) -> None:
    """The device limit is checked before any network call."""
    calls = []
    real = protocol.classify
    monkeypatch.setattr(protocol, "classify", lambda *a, **k: calls.append(1) or real(*a, **k))
    client = make_client(max_batch_pixels=1_000_000)
    wide = encode(sample_image(900, 300), "PNG")
    response = client.post(
        "/classify",
        params={"scales": "512"},
        content=wide,
        headers={"content-type": "image/png"},
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "too_large_for_device"
    assert calls == []
