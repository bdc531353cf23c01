"""An int8 export is served on the CPU with float32 input, by the same protocol, and answers
within the export's tolerance of its float32 twin (docs/serving.md, "int8 models")."""

from __future__ import annotations

import io
import logging

import numpy as np
import pytest
from PIL import Image

from model_store import ModelStore, cpu
from service.core import sessions
from service.http.app import create_app
from tests.service.helpers import TestClient, settings_for, variants_store
from training import quantize
from training.shapes import write_shapes


@pytest.fixture(scope="module")
def int8_store(tmp_path_factory: pytest.TempPathFactory) -> ModelStore:
    """``full`` (float32) and ``q`` (int8, calibrated on 16 shapes images) of one peaked tiny D."""
    root = tmp_path_factory.mktemp("int8")
    calibration = write_shapes(root / "cal", 2, seed=5, workers=1, progress=False)
    return variants_store(root / "store", 31, {"full": "float32", "q": "int8"}, calibration)


def _png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (260, 300, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def test_int8_model_serves_like_float32(
    int8_store: ModelStore, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING), TestClient(
        create_app(settings_for(int8_store.root))
    ) as client:  # fmt: skip
        models = {m["name"]: m for m in client.get("/models").json()["models"]}
        assert models["q"]["onnx"]["dtype"] == "int8"
        assert models["q"]["provider"] == "CPUExecutionProvider"
        reduce_range = int8_store.read("q").manifest.provenance.metrics["int8_reduce_range"]
        assert models["q"]["int8_note"] == cpu.int8_note(reduce_range=reduce_range)
        assert models["full"]["int8_note"] is None
        for seed in range(3):
            answers = {
                name: client.post(
                    "/classify",
                    params={"model": name, "top_k": "5", "method": "dense", "scales": "224,256"},
                    files={"image": ("x.png", _png(seed), "image/png")},
                ).json()
                for name in ("full", "q")
            }
            full = {p["index"]: p["probability"] for p in answers["full"]["predictions"]}
            q = {p["index"]: p["probability"] for p in answers["q"]["predictions"]}
            assert answers["q"]["views"] == answers["full"]["views"]
            assert (
                answers["q"]["predictions"][0]["index"]
                == answers["full"]["predictions"][0]["index"]
            )
            for index, probability in full.items():
                assert q[index] == pytest.approx(probability, abs=quantize.MAX_POSTERIOR_DIFF)
    notes = [r.getMessage() for r in caplog.records if "int8 model" in r.getMessage()]
    assert len(notes) == (0 if cpu.int8_note(reduce_range=reduce_range) is None else 1)


def test_model_int8_note() -> None:
    assert sessions.model_int8_note("float32", sessions.CPU) is None
    assert "not measured" in (sessions.model_int8_note("int8", sessions.CUDA) or "")
    assert sessions.model_int8_note("int8", sessions.CPU) == cpu.int8_note()
    no_vnni = "flags\t: fpu sse2 avx2 avx512f\n"
    assert "no VNNI" in (cpu.int8_note(no_vnni) or "")
    assert cpu.int8_note("flags\t: avx2 avx512_vnni\n") is None
