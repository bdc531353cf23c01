"""docs/training.md, "The features output": every classification export has the second output
``features``, fc7 after its ReLU, and the ops that compute ``scores`` are those of a scores-only
graph."""

from __future__ import annotations

import importlib.util
import tempfile
import warnings
from pathlib import Path
from types import ModuleType

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from model_store import ModelStore, StoreEntry, TrainScale, sha256_file
from tests.conftest import TINY_LABELS, TINY_PREPROCESSING, tiny_vgg
from training.export import DTYPES, export_onnx, export_to_store
from training.fully_conv import FC7_RELU, FullyConvVGG, to_fully_convolutional
from training.vgg import build_vgg


def scores_only_export(fcn: FullyConvVGG, path: Path, dtype: str = "float32") -> None:
    """The export as it was before the features output: the net alone, one output."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            fcn,
            (torch.zeros(1, 3, 224, 224, dtype=DTYPES[dtype]),),
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


# scripts/add_features_output.py: the same output for entries exported before it existed.

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "add_features_output.py"


@pytest.fixture(scope="module")
def surgery() -> ModuleType:
    spec = importlib.util.spec_from_file_location("add_features_output", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def old_entry(store: ModelStore, name: str, dtype: str = "float32", seed: int = 3) -> StoreEntry:
    """An entry as exported before the features output: a scores-only graph, no onnx.features."""
    model = tiny_vgg("D", seed=seed)
    entry = export_to_store(
        model,
        store,
        name,
        labels=TINY_LABELS,
        preprocessing=TINY_PREPROCESSING,
        train_scale=TrainScale(min=224, max=320),
        source="test",
        dtype=dtype,
        verify_sizes=((1, 224, 224),),
    )
    fcn = to_fully_convolutional(model).eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        scores_only_export(fcn.to(DTYPES[dtype]), path, dtype=dtype)
        onnx_info = entry.manifest.onnx.model_copy(
            update={"sha256": sha256_file(path), "features": None}
        )
        manifest = entry.manifest.model_copy(update={"onnx": onnx_info})
        return store.write(manifest, path, overwrite=True)


def test_surgery_writes_what_the_export_writes(
    nets: tuple[FullyConvVGG, Path, Path], surgery: ModuleType
) -> None:
    _, new, old = nets
    upgraded = surgery.add_features_output(onnx.load(str(old)))
    assert upgraded.SerializeToString() == new.read_bytes()


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_an_old_entry_gains_the_output_with_bit_identical_scores(
    tmp_path: Path, surgery: ModuleType, dtype: str
) -> None:
    store = ModelStore(tmp_path / "store")
    before = old_entry(store, "old", dtype)
    old_bytes = before.onnx_path.read_bytes()
    assert [o.name for o in onnx.load(str(before.onnx_path)).graph.output] == ["scores"]

    lines = surgery.upgrade_entry(store, "old", check=True)
    assert lines[-1].startswith("old: checked, nothing written")
    assert before.onnx_path.read_bytes() == old_bytes
    assert store.read("old").manifest.onnx.features is None

    lines = surgery.upgrade_entry(store, "old")
    assert sum("scores bit-identical" in line for line in lines) == 3
    after = store.read("old")  # the manifest's new sha256 is the file's
    assert after.manifest.onnx.features == "features"
    assert after.manifest.onnx.sha256 == sha256_file(after.onnx_path) != before.manifest.onnx.sha256
    assert after.manifest.model_dump(exclude={"onnx"}) == before.manifest.model_dump(
        exclude={"onnx"}
    )
    x = np.random.default_rng(2).standard_normal((2, 3, 288, 256)).astype(dtype)
    (expected,) = ort.InferenceSession(old_bytes).run(["scores"], {"image": x})
    session = ort.InferenceSession(str(after.onnx_path))
    scores, features = session.run(["scores", "features"], {"image": x})
    assert np.array_equal(scores, expected)
    assert features.shape == (2, 64, 3, 2) and features.dtype == np.dtype(dtype)

    again = surgery.upgrade_entry(store, "old")
    assert again == ["old: already has the output 'features', left as it is"]
    assert store.read("old").manifest == after.manifest


def test_a_graph_it_does_not_know_is_refused(tmp_path: Path, surgery: ModuleType) -> None:
    store = ModelStore(tmp_path / "store")
    entry = old_entry(store, "odd")
    model = onnx.load(str(entry.onnx_path))
    (relu,) = [n for n in model.graph.node if n.name == "/head/head.4/Relu"]
    relu.op_type = "Sigmoid"
    path = tmp_path / "odd.onnx"
    onnx.save(model, str(path))
    manifest = entry.manifest.model_copy(
        update={"onnx": entry.manifest.onnx.model_copy(update={"sha256": sha256_file(path)})}
    )
    store.write(manifest, path, overwrite=True)
    with pytest.raises(surgery.SurgeryError, match="does not read a Relu's output"):
        surgery.upgrade_entry(store, "odd")
    assert surgery.main([str(store.root), "odd"]) == 1
    assert store.read("odd").manifest.onnx.features is None


def test_an_entry_with_other_files_is_left_alone(tmp_path: Path, surgery: ModuleType) -> None:
    store = ModelStore(tmp_path / "store")
    entry = old_entry(store, "notes")
    (entry.path / "README.txt").write_text("kept")
    with pytest.raises(surgery.SurgeryError, match="also holds README.txt"):
        surgery.upgrade_entry(store, "notes")
    assert (entry.path / "README.txt").read_text() == "kept"


def test_the_command_line(tmp_path: Path, surgery: ModuleType, capsys) -> None:
    store = ModelStore(tmp_path / "store")
    old_entry(store, "a", seed=1)
    old_entry(store, "b", seed=2)
    assert surgery.main([str(store.root), "a", "b", "missing"]) == 1
    out, err = capsys.readouterr()
    assert "a: written, sha256" in out and "b: written, sha256" in out
    assert "missing: " in err and "nothing written" in err
    assert {store.read(n).manifest.onnx.features for n in ("a", "b")} == {"features"}
    assert surgery.main([str(store.root), "a"]) == 0
