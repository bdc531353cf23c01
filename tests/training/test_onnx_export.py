"""docs/training.md: the ONNX graph equals the torch FC net at several sizes and batch sizes, on
both outputs (scores and fc7's features)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import training.export as export_module
from model_store import ModelStore, Preprocessing, TrainScale
from tests.conftest import TINY_LABELS, tiny_vgg
from training.export import ExportError, export_onnx, export_to_store, verify_onnx
from training.fully_conv import to_fully_convolutional


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path]:
    fcn = to_fully_convolutional(tiny_vgg("E", seed=4)).eval()
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    checks = export_onnx(fcn, path)
    assert [(c.batch, c.height, c.width) for c in checks] == [
        (1, 224, 224),
        (2, 256, 320),
        (1, 480, 640),
    ]
    assert all(c.max_abs_diff <= c.tolerance for c in checks)
    assert all(0 < c.features_max_abs_diff <= c.features_tolerance for c in checks)
    return fcn, path


def test_graph_has_dynamic_n_h_w(exported: tuple[torch.nn.Module, Path]) -> None:
    graph = onnx.load(str(exported[1])).graph
    (image,) = graph.input
    scores, features = graph.output
    assert image.name == "image" and scores.name == "scores" and features.name == "features"
    dims = [d.dim_param or d.dim_value for d in image.type.tensor_type.shape.dim]
    assert dims == ["N", 3, "H", "W"]
    out = [d.dim_param or d.dim_value for d in scores.type.tensor_type.shape.dim]
    assert out == ["N", 5, "h", "w"]
    out = [d.dim_param or d.dim_value for d in features.type.tensor_type.shape.dim]
    assert out == ["N", 64, "h", "w"]  # F = fc_width
    assert image.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert features.type.tensor_type.elem_type == onnx.TensorProto.FLOAT


@pytest.mark.parametrize(
    ("batch", "height", "width"), [(1, 224, 224), (3, 224, 224), (2, 300, 257), (1, 512, 384)]
)
def test_onnx_equals_torch(
    exported: tuple[torch.nn.Module, Path], batch: int, height: int, width: int
) -> None:
    fcn, path = exported
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(batch))
    with torch.no_grad():
        expected = fcn(x).numpy()
        fc7 = fcn.head[:5](fcn.features(x)).numpy()  # fc6, ReLU, dropout, fc7, ReLU
    actual, features = session.run(["scores", "features"], {"image": x.numpy()})
    assert actual.shape == (batch, 5, height // 32 - 6, width // 32 - 6)
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())
    assert features.shape == (batch, 64, height // 32 - 6, width // 32 - 6)
    assert features.min() == 0  # after the ReLU
    np.testing.assert_allclose(features, fc7, rtol=1e-4, atol=1e-5 * np.abs(fc7).max())


def test_export_to_store_writes_a_complete_entry(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    model = tiny_vgg("D")
    entry = export_to_store(
        model,
        store,
        "tiny",
        labels=TINY_LABELS,
        preprocessing=Preprocessing(mean=(1, 2, 3)),
        train_scale=TrainScale(min=256, max=256),
        source="test",
        metrics={"val_top1_error": 0.1},
    )
    loaded = store.read("tiny")
    assert loaded.manifest == entry.manifest
    m = loaded.manifest
    assert (m.config, m.weight_layers, m.num_classes, m.labels) == ("D", 16, 5, TINY_LABELS)
    assert m.parameters == sum(p.numel() for p in model.parameters())
    assert m.test_scales == [224, 256, 288]
    assert (m.onnx.input, m.onnx.output, m.onnx.features, m.onnx.dtype, m.onnx.opset) == (
        "image",
        "scores",
        "features",
        "float32",
        17,
    )
    assert m.provenance.metrics == {"val_top1_error": 0.1}


def test_failed_verification_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(export_module.ATOL, "float32", -1.0)
    store = ModelStore(tmp_path / "store")
    with pytest.raises(ExportError, match=r"'scores' differs from torch at 1x3x224x224"):
        export_to_store(
            tiny_vgg("D"),
            store,
            "broken",
            labels=TINY_LABELS,
            preprocessing=Preprocessing(mean=(0, 0, 0)),
            train_scale=TrainScale(min=256, max=256),
            source="test",
        )
    assert not store.root.exists() or list(store.root.iterdir()) == []


def test_features_are_verified_on_their_own(
    exported: tuple[torch.nn.Module, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scores agree, fc7 does not: the features check alone refuses the graph."""
    fcn, path = exported
    right = fcn.scores_and_features

    def off_fc7(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores, features = right(image)
        return scores, features * 1.01

    monkeypatch.setattr(fcn, "scores_and_features", off_fc7)
    with pytest.raises(ExportError, match=r"'features' differs from torch at 1x3x224x224"):
        verify_onnx(fcn, path)


def test_labels_must_match_classes(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="2 labels for a model with 5 classes"):
        export_to_store(
            tiny_vgg("D"),
            ModelStore(tmp_path),
            "x",
            labels=["a", "b"],
            preprocessing=Preprocessing(mean=(0, 0, 0)),
            train_scale=TrainScale(min=256, max=256),
            source="test",
        )


def test_float16_export_is_verified_against_float32(tmp_path: Path) -> None:
    model = tiny_vgg("D", seed=9)
    entry = export_to_store(
        model,
        ModelStore(tmp_path / "store"),
        "half",
        labels=TINY_LABELS,
        preprocessing=Preprocessing(mean=(0, 0, 0)),
        train_scale=TrainScale(min=256, max=256),
        source="test",
        dtype="float16",
    )
    assert entry.manifest.onnx.dtype == "float16"
    graph = onnx.load(str(entry.onnx_path)).graph
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert [o.name for o in graph.output] == ["scores", "features"]
    assert all(o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16 for o in graph.output)
    assert entry.manifest.onnx.features == "features"
    full = tmp_path / "full.onnx"
    export_onnx(to_fully_convolutional(model), full, verify_sizes=((1, 224, 224),))
    assert entry.onnx_path.stat().st_size < 0.6 * full.stat().st_size

    x = torch.randn(2, 3, 256, 288, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = to_fully_convolutional(model).eval()(x).numpy()
    session = ort.InferenceSession(str(entry.onnx_path), providers=["CPUExecutionProvider"])
    (half,) = session.run(["scores"], {"image": x.numpy().astype(np.float16)})
    assert half.dtype == np.float16
    np.testing.assert_allclose(
        half.astype(np.float32), expected, atol=2e-2 * np.abs(expected).max()
    )


def test_unknown_dtype_refused(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="unknown export dtype 'int8'"):
        export_onnx(to_fully_convolutional(tiny_vgg("A")), tmp_path / "m.onnx", dtype="int8")
