"""A float16 export is served with float16 input and agrees with its float32 twin."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.http.app import create_app
from tests.service.helpers import TestClient, full_and_half_store, settings_for


def test_float16_model_serves_like_float32(tmp_path: Path) -> None:
    store = full_and_half_store(tmp_path / "store", seed=21)
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (260, 300, 3), dtype=np.uint8)).save(buffer, "PNG")
    with TestClient(create_app(settings_for(store.root))) as client:
        models = {m["name"]: m for m in client.get("/models").json()["models"]}
        assert models["half"]["onnx"]["dtype"] == "float16"
        answers = {
            name: client.post(
                "/classify",
                params={"model": name, "top_k": "5", "method": "combined", "scales": "224,256"},
                files={"image": ("x.png", buffer.getvalue(), "image/png")},
            ).json()
            for name in ("full", "half")
        }
    full = {p["index"]: p["probability"] for p in answers["full"]["predictions"]}
    half = {p["index"]: p["probability"] for p in answers["half"]["predictions"]}
    assert answers["half"]["views"] == answers["full"]["views"] == 2 * (2 + 50)
    for index, probability in full.items():
        assert half[index] == pytest.approx(probability, abs=0.02)


def test_a_float16_engine_is_fed_float16_made_by_the_lookup(tmp_path: Path) -> None:
    """The protocol makes a float16 export's input in float16 directly (``to_input``'s float16
    table), the same bits as casting the float32 input; a float32 model of the same image keeps
    its own float32 input."""
    from model_store.imaging import rescale, to_input
    from service.core.engine import EngineOptions, open_engine
    from service.core.protocol import ScaledImages

    store = full_and_half_store(tmp_path / "store", seed=22)
    half = open_engine(store, "half", EngineOptions(device="cpu"))
    full = open_engine(store, "full", EngineOptions(device="cpu"))
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, (250, 330, 3), dtype=np.uint8))
    cache = ScaledImages(image)
    x16, x32 = cache.get(256, half), cache.get(256, full)
    assert x16.dtype == np.float16 and x32.dtype == np.float32
    want = to_input(rescale(image, 256), half.manifest.preprocessing).astype(np.float16)
    assert np.array_equal(x16.view(np.uint16), want.view(np.uint16))
    assert len(cache.rescaled) == 1  # one rescale for both models
    scores = half.scores(np.stack([x16, x16[:, :, ::-1]]))
    assert scores.dtype == np.float32 and scores.shape[:2] == (2, half.manifest.num_classes)
