"""The int8 suite on a tiny model: the int8 twin is built once and cached, the report's figures
and ratios are computed from the medians it records, OpenVINO is a peer when it imports and
reported as skipped (with the reason) when it does not, and the accuracy figure counts photos.
No timing assertions."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest

from bench import run as bench_run
from bench.context import QUICK, Context
from bench.models import TINY_D, ensure_int8_store, ensure_store
from bench.suites import int8

SMOKE = replace(QUICK, reps=1, warmup=0)


@pytest.fixture(scope="module")
def ctx(tmp_path_factory: pytest.TempPathFactory):
    cache = tmp_path_factory.mktemp("bench-int8-cache")
    ensure_store(cache, [TINY_D], verify=False)
    env = {"VERYDEEP_INTRA_OP_THREADS": "1", "VERYDEEP_WARMUP": "false"}
    context = Context(mode=SMOKE, cache_dir=cache, model=TINY_D, served=(TINY_D,), server_env=env)
    yield context
    context.close()


@pytest.fixture
def small(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(int8.PROTOCOL_REPS, "quick", 1)
    monkeypatch.setattr(int8, "PROTOCOL_WARMUP", 0)
    monkeypatch.setitem(int8.ACCURACY_PHOTOS, "quick", 7)


def _by_label(figures) -> dict[str, int8.Figure]:
    return {f.label + " / " + f.peer_label: f for f in figures}


def test_int8_twin_is_cached_and_records_its_calibration(ctx: Context) -> None:
    entry = ctx.model_entry()
    first = ensure_int8_store(ctx.cache_dir, entry)
    twin = first.read(f"{TINY_D.name}-int8")  # verified: its sha256 matches its file
    assert twin.manifest.onnx.dtype == "int8"
    metrics = twin.manifest.provenance.metrics
    assert metrics["int8_calibration_images"] == 8
    assert metrics["int8_calibration_scales"] == entry.manifest.test_scales
    assert isinstance(metrics["int8_reduce_range"], bool)
    mtime = twin.onnx_path.stat().st_mtime_ns
    again = ensure_int8_store(ctx.cache_dir, entry)
    assert again.root == first.root
    assert again.read(f"{TINY_D.name}-int8").onnx_path.stat().st_mtime_ns == mtime


def test_report_structure_and_ratios(ctx: Context, small: None) -> None:
    pytest.importorskip("openvino")
    figures, details = int8.run(ctx)
    # one view and the protocol: int8 vs float32, then onnxruntime vs OpenVINO per dtype; accuracy
    assert len(figures) == 7
    assert [f.target for f in figures] == [
        int8.ONE_VIEW_TARGET, None, None, int8.PROTOCOL_TARGET, None, None, None
    ]  # fmt: skip
    for key, offset in (("one_view", 0), ("protocol", 3)):
        med = {name: s["median"] for name, s in details[key]["seconds"].items()}
        assert set(med) == {"ort_float32", "ort_int8", "ov_float32", "ov_int8"}
        speed, ov32, ov8 = figures[offset : offset + 3]
        assert speed.status in ("PASS", "MISS") and speed.ratio_label == "float32/int8"
        assert speed.ratio == pytest.approx(med["ort_float32"] / med["ort_int8"])
        assert speed.value == pytest.approx(med["ort_int8"] * 1e3)
        assert ov32.ratio == pytest.approx(med["ort_float32"] / med["ov_float32"])
        assert ov8.ratio == pytest.approx(med["ort_int8"] / med["ov_int8"])
        assert ov32.ratio_label == "onnxruntime/OpenVINO" and ov8.status == "INFO"
        # OpenVINO computes the same float32 net
        agreement = details[key]["against_ort_float32"]
        assert agreement["ov_float32"]["max_abs_posterior_diff"] < 1e-4
    assert details["one_view"]["views"] == 1 and details["one_view"]["input_shapes"] == [
        [1, 3, 256, 341]
    ]
    assert details["protocol"]["views"] == 6
    assert [s[2] for s in details["protocol"]["input_shapes"]] == list(int8.PROTOCOL_SCALES)
    assert details["openvino"]["config"]["INFERENCE_PRECISION_HINT"] == "f32"
    assert details["openvino"]["config"]["INFERENCE_NUM_THREADS"] == details["threads"] == 1
    acc = figures[-1]
    assert acc.unit == "photos" and acc.peer == 7 and 0 <= acc.value <= 7
    assert acc.ratio == pytest.approx(acc.value / 7)
    assert details["accuracy"]["photos"] == 7 and details["accuracy"]["views_per_photo"] == 2
    assert 0 <= details["accuracy"]["max_abs_posterior_diff"] < 0.25


def test_openvino_missing_is_reported_as_skipped(
    ctx: Context, small: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    def missing():
        raise ModuleNotFoundError("No module named 'openvino'")

    monkeypatch.setattr(int8, "import_openvino", missing)
    monkeypatch.setitem(int8.ACCURACY_PHOTOS, "quick", 2)
    figures, details = int8.run(ctx)
    assert details["openvino"]["skipped"].startswith("openvino not importable")
    peers = [f for f in figures if "OpenVINO" in f.peer_label]
    assert len(peers) == 4
    for f in peers:
        assert f.status == "INFO" and math.isnan(f.ratio) and math.isnan(f.peer)
        assert f.note.startswith("skipped: openvino not importable (ModuleNotFoundError")
    assert figures[0].ratio > 0 and figures[3].ratio > 0  # onnxruntime still measured


def test_a_graph_openvino_cannot_compile_is_skipped_alone(
    ctx: Context, small: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("openvino")
    real = int8.openvino_compile

    def compile_model(core, path: Path, threads: int):
        if Path(path).parent.name.endswith("-int8"):  # the twin's entry folder
            raise RuntimeError("cannot read QuantizeLinear")
        return real(core, path, threads)

    monkeypatch.setattr(int8, "openvino_compile", compile_model)
    figures, details = int8.run(ctx)
    assert "skipped" not in details["openvino"]
    assert "cannot read QuantizeLinear" in details["openvino"]["skipped_dtypes"]["int8"]
    assert figures[1].ratio > 0 and "float32" in figures[1].peer_label
    assert math.isnan(figures[2].ratio) and "OpenVINO failed on it" in figures[2].note


def test_int8_is_in_the_quick_cpu_suite_only() -> None:
    assert "int8" in bench_run.parse_args(["--quick"]).names
    assert "int8" not in bench_run.parse_args(["--device", "cuda"]).names
