"""int8 export (docs/training.md, "int8 export"): calibration folder checks, the verified int8
entry, the CPU flag probe."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from model_store import ModelStore, cpu
from model_store.imaging import decode, rescale, to_input
from tests.training.test_export_command import write_checkpoint
from training import quantize
from verydeep.cli import main


def _export(tmp_path: Path, calibration: Path, *extra: str) -> list[str]:
    return [
        "export", str(tmp_path / "c.pt"), "--store", str(tmp_path / "store"), "--name", "q",
        "--int8", "--calibration", str(calibration), *extra,
    ]  # fmt: skip


def test_int8_export_verifies_and_writes_dtype_int8(
    tmp_path: Path, shapes_data: tuple[Path, Path]
) -> None:
    write_checkpoint(tmp_path / "c.pt", seed=3)
    assert main(_export(tmp_path, shapes_data[0], "--test-scales", "256,288")) == 0
    entry = ModelStore(tmp_path / "store").read("q")
    m = entry.manifest
    assert m.onnx.dtype == "int8"
    assert m.onnx.features == "features"
    assert m.test_scales == [256, 288]
    metrics = m.provenance.metrics
    assert metrics["int8_calibration_images"] == 24
    assert metrics["int8_max_posterior_diff"] <= quantize.MAX_POSTERIOR_DIFF
    assert metrics["int8_top1_agreement"] >= quantize.MIN_TOP1_AGREEMENT
    graph = onnx.load(str(entry.onnx_path))
    ops = {node.op_type for node in graph.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert graph.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [o.name for o in graph.graph.output] == ["scores", "features"]


def test_int8_export_refuses_a_too_small_calibration_folder(
    tmp_path: Path, shapes_data: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    write_checkpoint(tmp_path / "c.pt")
    small = tmp_path / "small"
    small.mkdir()
    for image in sorted(shapes_data[0].rglob("*.jpg"))[:3]:
        shutil.copy(image, small / image.name)
    (small / "broken.jpg").write_bytes(b"not a jpeg")
    assert main(_export(tmp_path, small)) == 2
    err = capsys.readouterr().err
    assert "has 3 decodable images (1 undecodable)" in err
    assert f"at least {quantize.MIN_CALIBRATION_IMAGES}" in err
    assert not (tmp_path / "store" / "q").exists()


def test_int8_needs_calibration_and_excludes_fp16(
    tmp_path: Path, shapes_data: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    write_checkpoint(tmp_path / "c.pt")
    base = ["export", str(tmp_path / "c.pt"), "--store", str(tmp_path / "s"), "--name", "q"]
    assert main([*base, "--int8"]) == 2
    assert "--int8 and --calibration DIR go together" in capsys.readouterr().err
    assert main(_export(tmp_path, shapes_data[0], "--fp16")) == 2
    assert "exclude each other" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_int8_export_refuses_a_graph_outside_the_tolerance(
    tmp_path: Path, shapes_data: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    write_checkpoint(tmp_path / "c.pt")
    monkeypatch.setattr(quantize, "MAX_POSTERIOR_DIFF", -1.0)
    assert main(_export(tmp_path, shapes_data[0], "--test-scales", "256")) == 2
    assert "int8 graph disagrees with float32" in capsys.readouterr().err
    assert not (tmp_path / "store" / "q").exists()


def test_calibration_inputs_are_the_services_whole_images(shapes_data: tuple[Path, Path]) -> None:
    from tests.conftest import TINY_PREPROCESSING

    images, inputs = quantize.calibration_inputs(shapes_data[0], TINY_PREPROCESSING, [224, 256])
    assert images == 24 and len(inputs) == 48
    first = sorted(p for p in shapes_data[0].rglob("*") if p.suffix == ".jpg")[0]
    image = decode(first.read_bytes(), max_scale=256).image
    want = to_input(rescale(image, 256), TINY_PREPROCESSING)[None]
    np.testing.assert_array_equal(inputs[1], want)
    assert min(inputs[0].shape[2:]) == 224 and min(inputs[1].shape[2:]) == 256


@pytest.mark.parametrize(
    ("flags", "vnni"),
    [
        ("fpu sse2 avx2 avx512f avx512_vnni", True),
        ("fpu sse2 avx2 avx_vnni", True),
        ("fpu sse2 avx2 avx512f avx512bw", False),
        ("fpu sse2 avx2", False),
    ],
)
def test_vnni_probe_parses_cpuinfo_flags(flags: str, vnni: bool) -> None:
    cpuinfo = f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: {flags}\n\nprocessor\t: 1\n"
    assert cpu.cpu_has_vnni(cpuinfo) is vnni
    assert (cpu.int8_note(cpuinfo) is None) is vnni
    assert cpu.cpu_has_vnni("processor\t: 0\n") is False
    assert "unknown" in (cpu.int8_note("processor\t: 0\n") or "")
