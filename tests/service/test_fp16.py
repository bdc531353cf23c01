"""A float16 export is served with float16 input and agrees with its float32 twin."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model_store import ModelStore, TrainScale
from service.app import create_app
from tests.conftest import TINY_LABELS, TINY_PREPROCESSING
from tests.service.conftest import TestClient, peaked_vgg, settings_for
from training.export import export_to_store


def test_float16_model_serves_like_float32(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    model = peaked_vgg("D", 21)
    for name, dtype in (("full", "float32"), ("half", "float16")):
        export_to_store(
            model,
            store,
            name,
            labels=TINY_LABELS,
            preprocessing=TINY_PREPROCESSING,
            train_scale=TrainScale(min=256, max=256),
            source="test",
            dtype=dtype,
        )
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
