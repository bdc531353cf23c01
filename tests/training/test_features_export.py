"""docs/training.md, "The features output": every classification export has the second output
``features``, fc7 after its ReLU, and the ops that compute ``scores`` are those of a scores-only
graph."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from tests.conftest import tiny_vgg
from training.export import export_onnx
from training.fully_conv import FC7_RELU, FullyConvVGG, to_fully_convolutional
from training.vgg import build_vgg


def scores_only_export(fcn: FullyConvVGG, path: Path) -> None:
    """The export as it was before the features output: the net alone, one output."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            fcn,
            (torch.zeros(1, 3, 224, 224),),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["image"],
            output_names=["scores"],
            dynamic_axes={"image": {0: "N", 2: "H", 3: "W"}, "scores": {0: "N", 2: "h", 3: "w"}},
        )


@pytest.fixture(scope="module")
def nets(tmp_path_factory: pytest.TempPathFactory) -> tuple[FullyConvVGG, Path, Path]:
    """A net with fc width 48 (not the conv width, not K), its export and a scores-only export."""
    torch.manual_seed(5)
    model = build_vgg("D", 6, width=1 / 16, fc_width=48, init="kaiming").eval()
    fcn = to_fully_convolutional(model).eval()
    root = tmp_path_factory.mktemp("features")
    export_onnx(fcn, root / "new.onnx")
    scores_only_export(fcn, root / "old.onnx")
    return fcn, root / "new.onnx", root / "old.onnx"


def test_scores_and_features_is_forward_with_fc7_after_its_relu() -> None:
    fcn = to_fully_convolutional(tiny_vgg("E", seed=2)).eval()
    x = torch.randn(2, 3, 256, 288, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        scores, features = fcn.scores_and_features(x)
        assert torch.equal(scores, fcn(x))
        assert isinstance(fcn.head[FC7_RELU], torch.nn.ReLU)
        fc7 = torch.relu(fcn.head[3](torch.relu(fcn.head[0](fcn.features(x)))))
    assert features.shape == (2, 64, 2, 3) and fcn.feature_dim == 64
    torch.testing.assert_close(features, fc7, rtol=0, atol=0)


def test_export_leaves_the_net_in_eval_mode(nets: tuple[FullyConvVGG, Path, Path]) -> None:
    fcn = nets[0]
    assert not any(m.training for m in fcn.modules())


def test_features_output_is_fc7_at_every_size(nets: tuple[FullyConvVGG, Path, Path]) -> None:
    fcn, new, _ = nets
    session = ort.InferenceSession(str(new), providers=["CPUExecutionProvider"])
    for batch, height, width in ((1, 224, 224), (3, 257, 300), (1, 384, 512)):
        x = torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(height))
        with torch.no_grad():
            scores, fc7 = (t.numpy() for t in fcn.scores_and_features(x))
        got_scores, got_fc7 = session.run(["scores", "features"], {"image": x.numpy()})
        assert got_fc7.shape == (batch, 48, height // 32 - 6, width // 32 - 6)
        np.testing.assert_allclose(got_fc7, fc7, rtol=1e-4, atol=1e-5 * np.abs(fc7).max())
        np.testing.assert_allclose(got_scores, scores, rtol=1e-4, atol=1e-5 * np.abs(scores).max())
        (alone,) = session.run(["scores"], {"image": x.numpy()})
        assert np.array_equal(alone, got_scores)


def test_scores_are_computed_by_the_ops_of_the_scores_only_graph(
    nets: tuple[FullyConvVGG, Path, Path],
) -> None:
    """The same nodes and weights; only fc7's ReLU output is named ``features`` (and listed as
    an output), so scores agree bit for bit with the graph that has no features output."""
    _, new, old = nets
    g_new, g_old = onnx.load(str(new)).graph, onnx.load(str(old)).graph
    (relu,) = [n for n in g_old.node if n.name == f"/head/head.{FC7_RELU}/Relu"]
    renamed = {relu.output[0]: "features"}

    def renamed_node(node: onnx.NodeProto) -> onnx.NodeProto:
        node = onnx.NodeProto.FromString(node.SerializeToString())
        for field in (node.input, node.output):
            field[:] = [renamed.get(name, name) for name in field]
        return node

    assert list(g_new.node) == [renamed_node(n) for n in g_old.node]
    assert list(g_new.initializer) == list(g_old.initializer)
    assert [o.name for o in g_new.output] == ["scores", "features"]
    assert g_new.output[0] == g_old.output[0]
    x = np.random.default_rng(0).standard_normal((2, 3, 256, 320), dtype=np.float32)
    runs = [
        ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(
            ["scores"], {"image": x}
        )[0]
        for p in (old, new)
    ]
    assert np.array_equal(runs[0], runs[1])
