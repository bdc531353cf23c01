"""The committed demo store (docs/training.md, "The demo store"): valid entries, small, with the
features output, and models that have learned."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from model_store import ModelStore, sha256_file
from service.core.evaluate import evaluate
from tests.service.helpers import settings_for
from training.shapes import CLASSES, write_shapes

REPO = Path(__file__).resolve().parents[2]
DEMO = {"demo-d": ("D", 16), "demo-e": ("E", 19)}
MAX_ONNX_BYTES = 10 * 1024 * 1024
FC_WIDTH = 128  # fc6/fc7 of the demo nets (docs/training.md, "The demo store")
TEST_SEED = 2024  # the seed of the README's test set; training used seeds 0 and 1
PER_CLASS = 8


@pytest.fixture(scope="module")
def demo_store() -> ModelStore:
    return ModelStore(REPO / "model_store")


def test_demo_entries_are_valid_small_and_trained_on_shapes(demo_store: ModelStore) -> None:
    for name, (config, layers) in DEMO.items():
        entry = demo_store.read(name)  # validates the manifest and the ONNX sha256
        manifest = entry.manifest
        assert (manifest.name, manifest.config, manifest.weight_layers) == (name, config, layers)
        assert manifest.labels == list(CLASSES)
        assert manifest.train_scale.min < manifest.train_scale.max  # jittered S
        assert manifest.provenance.source == "training"
        assert entry.onnx_path.stat().st_size < MAX_ONNX_BYTES
    assert demo_store.ensembles()["demo-de"] == ["demo-d", "demo-e"]


@pytest.mark.parametrize("name", sorted(DEMO))
def test_demo_entries_have_the_features_output(demo_store: ModelStore, name: str) -> None:
    """docs/training.md, "The features output": fc7 after its ReLU, (N, F, h, w) beside the
    scores (N, K, h, w), named by the manifest, whose sha256 is the committed file's."""
    entry = demo_store.read(name, verify=False)
    onnx_info = entry.manifest.onnx
    assert onnx_info.sha256 == sha256_file(entry.onnx_path)
    assert (onnx_info.output, onnx_info.features) == ("scores", "features")
    session = ort.InferenceSession(str(entry.onnx_path), providers=["CPUExecutionProvider"])
    outputs = {o.name: o.shape for o in session.get_outputs()}
    assert outputs == {"scores": ["N", 8, "h", "w"], "features": ["N", FC_WIDTH, "h", "w"]}
    x = np.random.default_rng(0).standard_normal((2, 3, 256, 341), dtype=np.float32)
    scores, features = session.run(["scores", "features"], {"image": x})
    assert scores.shape == (2, 8, 2, 4) and features.shape == (2, FC_WIDTH, 2, 4)
    assert features.min() == 0 and features.max() > 0  # after a ReLU, and not all dead
    (alone,) = session.run(["scores"], {"image": x})
    assert np.array_equal(alone, scores)


def test_demo_models_classify_unseen_shapes(demo_store: ModelStore, tmp_path: Path) -> None:
    data = write_shapes(tmp_path / "test", PER_CLASS, seed=TEST_SEED, workers=1, progress=False)
    settings = settings_for(demo_store.root)
    rows = evaluate(demo_store, "demo-de", data, settings=settings, progress=False)
    errors = {row.model: row.top1_error for row in rows}
    assert set(errors) == {"demo-d", "demo-e", "demo-de"}
    assert all(row.images == PER_CLASS * len(CLASSES) for row in rows)
    # The README states the errors on 50 images per class; 64 images allow some slack above them.
    assert errors["demo-d"] <= 0.15 and errors["demo-e"] <= 0.15, errors
    assert errors["demo-de"] <= 0.10, errors


def test_demo_loc_localizes_unseen_shapes(demo_store: ModelStore, tmp_path: Path) -> None:
    """demo-loc (docs/localization.md, "The demo: demo-loc"): a localisation entry of per-class
    regression from demo-d, ranked by demo-de, whose boxes hit on 64 unseen images: the target
    is at most 10% top-1 localisation error (0.50% measured on 400)."""
    from service.core.evaluate_localization import evaluate_localization

    entry = demo_store.read("demo-loc")
    manifest = entry.manifest
    assert manifest.task == "localization" and manifest.labels == list(CLASSES)
    assert manifest.localization is not None
    assert manifest.localization.model_dump() == {
        "regression": "per-class", "tuned": "all", "classifier": "demo-de"
    }  # fmt: skip
    assert (manifest.onnx.output, manifest.onnx.features) == ("boxes", "features")
    assert entry.onnx_path.stat().st_size < MAX_ONNX_BYTES
    data = write_shapes(tmp_path / "test", PER_CLASS, seed=TEST_SEED, workers=1, progress=False)
    row = evaluate_localization(
        demo_store, "demo-loc", data, settings=settings_for(demo_store.root), progress=False
    )
    assert row.classified_by == "demo-de" and row.images == PER_CLASS * len(CLASSES)
    assert row.top1_error <= 0.10 and row.central_error <= 0.10, row
