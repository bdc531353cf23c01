"""import-torchvision: weights_only loading, exact mapping, equivalence with torchvision."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torchvision

import training.torchvision_import as tv_import
from model_store import ModelStore
from training.fully_conv import to_fully_convolutional
from training.torchvision_import import (
    WeightsError,
    build_torchvision_model,
    import_torchvision,
    load_weights_file,
)
from verydeep.cli import main


def random_torchvision(arch: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return getattr(torchvision.models, arch)().eval()


def test_vgg16_import_matches_torchvision_forward(tmp_path: Path) -> None:
    """Full size, random weights: torchvision's file through our import equals its forward."""
    reference = random_torchvision("vgg16")
    weights = tmp_path / "vgg16.pth"
    torch.save(reference.state_dict(), weights)
    entry = import_torchvision("vgg16", tmp_path / "store", "vgg16", weights=weights)

    m = entry.manifest
    assert (m.config, m.parameters, m.num_classes) == ("D", 138_357_544, 1000)
    assert m.labels[0] == "tench" and len(m.labels) == 1000
    assert m.preprocessing.scale == pytest.approx(1 / 255)
    assert m.preprocessing.mean == (0.485, 0.456, 0.406)
    assert m.test_scales == [224, 256, 288]
    assert m.provenance.source == "torchvision"

    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = reference(x).numpy()
    session = ort.InferenceSession(str(entry.onnx_path), providers=["CPUExecutionProvider"])
    (scores,) = session.run(["scores"], {"image": x.numpy()})
    assert scores.shape == (2, 1000, 1, 1)
    np.testing.assert_allclose(
        scores[:, :, 0, 0], expected, rtol=1e-3, atol=1e-3 * np.abs(expected).max()
    )


def test_vgg19_maps_onto_config_e_and_matches_torchvision(tmp_path: Path) -> None:
    reference = random_torchvision("vgg19", seed=1)
    weights = tmp_path / "vgg19.pth"
    torch.save(reference.state_dict(), weights)
    model = build_torchvision_model("vgg19", load_weights_file(weights), str(weights))
    assert model.config == "E"
    fcn = to_fully_convolutional(model).eval()
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        torch.testing.assert_close(fcn(x)[:, :, 0, 0], reference(x), rtol=1e-4, atol=1e-5)


@pytest.fixture
def small_state() -> dict[str, torch.Tensor]:
    """vgg11's keys and shapes, every tensor a zero-stride view of one element: its file takes
    kilobytes instead of the 0.5 GB of real vgg11 weights."""
    with torch.device("meta"):
        keys = torchvision.models.vgg11().state_dict()
    return {k: torch.zeros(()).expand(v.shape) for k, v in keys.items()}


def check(state: dict[str, torch.Tensor], tmp_path: Path) -> None:
    path = tmp_path / "w.pth"
    torch.save(state, path)
    build_torchvision_model("vgg11", load_weights_file(path), "w.pth")


def test_missing_key_is_named(small_state: dict, tmp_path: Path) -> None:
    del small_state["features.3.weight"]
    with pytest.raises(WeightsError, match=r"missing key 'features.3.weight'"):
        check(small_state, tmp_path)


def test_wrong_shape_is_named(small_state: dict, tmp_path: Path) -> None:
    small_state["classifier.6.weight"] = torch.zeros(10, 4096)
    with pytest.raises(
        WeightsError, match=r"'classifier.6.weight' has shape \(10, 4096\), expected \(1000, 4096\)"
    ):
        check(small_state, tmp_path)


def test_unexpected_key_is_named(small_state: dict, tmp_path: Path) -> None:
    small_state["extra.weight"] = torch.zeros(1)
    with pytest.raises(WeightsError, match=r"unexpected key 'extra.weight'"):
        check(small_state, tmp_path)


def test_wrong_arch_names_first_mismatch(small_state: dict, tmp_path: Path) -> None:
    path = tmp_path / "w.pth"
    torch.save(small_state, path)
    with pytest.raises(WeightsError, match=r"missing key 'features.2.weight'"):
        build_torchvision_model("vgg13", load_weights_file(path), "w.pth")


class Evil:
    def __reduce__(self) -> tuple:
        return (print, ("unpickled!",))


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"features.0.weight": Evil()}, path)
    with pytest.raises(WeightsError, match="weights_only=True"):
        load_weights_file(path)


def test_missing_file_and_no_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(WeightsError, match="no weights file"):
        import_torchvision("vgg11", tmp_path, "x", weights=tmp_path / "none.pth")

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(tv_import.torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(WeightsError, match=r"cannot download .* pass it with --weights FILE"):
        import_torchvision("vgg11", tmp_path, "x")
    assert ModelStore(tmp_path).names() == []


def test_cli_reports_errors_without_traceback(
    small_state: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    del small_state["features.0.bias"]
    path = tmp_path / "w.pth"
    torch.save(small_state, path)
    code = main(
        [
            "import-torchvision",
            "vgg11",
            "--weights",
            str(path),
            "--store",
            str(tmp_path / "s"),
            "--name",
            "v",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "missing key 'features.0.bias'" in err and "Traceback" not in err
    assert not (tmp_path / "s" / "v").exists()


def test_a_file_of_random_bytes_is_not_a_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    noise = tmp_path / "noise.pth"
    noise.write_bytes(np.random.default_rng(0).bytes(4096))
    text = tmp_path / "notes.pth"
    text.write_text("these are not weights\n")  # torch.load raises a bare KeyError: 101
    for path in (noise, text):
        with pytest.raises(WeightsError, match=r"is not a PyTorch checkpoint"):
            load_weights_file(path)
    code = main(["import-torchvision", "vgg11", "--weights", str(text), "--store",
                 str(tmp_path / "s"), "--name", "v"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and f"{text} is not a PyTorch checkpoint" in err
    assert "Traceback" not in err and "101" not in err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"weight": torch.zeros(2), "bias": torch.zeros(1)},
         r"is not a torchvision VGG state dict: it has none of the keys 'features.0.weight', "
         r"'features.0.bias', ... \(22 in all\) and holds 'weight', 'bias'"),
        ({"epoch": 3, "model": {"w": torch.zeros(1)}},
         r"does not hold a state dict of tensors: 'epoch' is an int"),
        ([torch.zeros(1)], r"holds a list, not a state dict of tensors"),
        ({"format": "verydeep-checkpoint"}, r"a checkpoint of `verydeep train`.*verydeep export"),
    ],
)  # fmt: skip
def test_a_torch_file_that_is_no_vgg_state_dict_says_what_it_is(
    tmp_path: Path, content: object, message: str
) -> None:
    path = tmp_path / "w.pth"
    torch.save(content, path)
    with pytest.raises(WeightsError, match=message):
        build_torchvision_model("vgg11", load_weights_file(path), str(path))
