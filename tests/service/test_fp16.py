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
