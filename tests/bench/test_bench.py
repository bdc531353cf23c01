"""Fast checks of the benchmark pieces that can be wrong: the multiply-add counter (by hand and
against torch hooks), percentiles, the results JSON, and smoke runs of benchmarks on tiny models
against a real server process (no timing assertions)."""

from __future__ import annotations

import json
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from bench import run as bench_run
from bench.context import QUICK, Context
from bench.models import TINY_D, ModelSpec, build_torch, conv_macs, ensure_store, torch_hook_macs
from bench.report import Figure, Target, markdown_table, results_document, write_json
from bench.stats import median, percentile
from bench.suites import batched, coldstart, decode, efficiency, load, overhead, scales
from training.fully_conv import to_fully_convolutional

# --- multiply-adds -----------------------------------------------------------------------------


def test_macs_by_hand_config_a_at_crop_size() -> None:
    # Config A at width 1/64: conv widths 1, 2, 4, 4, 8, 8, 8, 8; fc 16; 5 classes; 224 x 224.
    by_hand = (
        224 * 224 * 1 * 3 * 9  # conv1 (64 -> 1)
        + 112 * 112 * 2 * 1 * 9  # pool, conv2 (128 -> 2)
        + 56 * 56 * 4 * 2 * 9
        + 56 * 56 * 4 * 4 * 9  # pool, conv3-4 (256 -> 4)
        + 28 * 28 * 8 * 4 * 9
        + 28 * 28 * 8 * 8 * 9  # pool, conv5-6 (512 -> 8)
        + 14 * 14 * 8 * 8 * 9 * 2  # pool, conv7-8
        + 16 * 8 * 7 * 7  # pool to 7 x 7, fc6 as a 7x7 conv: one position
        + 16 * 16  # fc7
        + 5 * 16  # fc8
    )
    macs = conv_macs("A", 224, 224, width_mult=1 / 64, fc_width=16, num_classes=5)
    assert macs["total"] == by_hand
    assert macs["score_map"] == 1


def test_macs_of_full_vgg16_match_the_known_figure() -> None:
    # 15.47 G multiply-adds per 224 crop: the figure every model zoo quotes for VGG-16.
    assert conv_macs("D", 224, 224)["total"] == 15_470_264_320
    # A dense view of a 256 x 341 image: a 2 x 4 score map, so the head runs at 8 positions.
    macs = conv_macs("D", 256, 341)
    assert macs["score_map"] == (256 // 32 - 6) * (341 // 32 - 6) == 8
    assert macs["fc7"] == 8 * 4096 * 4096


@pytest.mark.parametrize("config", ["A-LRN", "C", "D", "E"])
@pytest.mark.parametrize("size", [(224, 224), (256, 341), (300, 257)])
def test_macs_agree_with_torch_hooks(config: str, size: tuple[int, int]) -> None:
    spec = ModelSpec("t", config, width=1 / 16, fc_width=32, num_classes=7)
    fcn = to_fully_convolutional(build_torch(spec))
    expected = torch_hook_macs(fcn, *size)
    got = conv_macs(config, *size, width_mult=1 / 16, fc_width=32, num_classes=7)["total"]
    assert got == expected


def test_macs_refuse_inputs_smaller_than_a_crop() -> None:
    with pytest.raises(ValueError):
        conv_macs("D", 200, 300)


# --- percentiles -------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3, 10, 101])
def test_percentile_matches_numpy(n: int) -> None:
    values = np.random.default_rng(n).exponential(size=n).tolist()
    for p in (0, 1, 25, 50, 90, 95, 99, 100):
        assert percentile(values, p) == pytest.approx(float(np.percentile(values, p)))


def test_percentile_edge_cases() -> None:
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0 == median([1.0, 3.0, 2.0])
    assert percentile([1.0, 2.0], 50) == 1.5
    assert percentile([1.0, 2.0, 3.0, 4.0], 99) == pytest.approx(3.97)
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_load_summary_counts_statuses_and_percentiles() -> None:
    raw = {
        "concurrency": 2,
        "burst": False,
        "wall_s": 2.0,
        "cpu_s": 0.1,
        "records": [
            {"worker": 0, "start_s": 0.0, "latency_s": 0.5, "status": 200},
            {"worker": 1, "start_s": 0.0, "latency_s": 1.0, "status": 200},
            {"worker": 0, "start_s": 0.5, "latency_s": 0.5, "status": 200},
            {
                "worker": 1,
                "start_s": 1.0,
                "latency_s": 0.01,
                "status": 503,
                "error": {"code": "overloaded", "message": "2 requests running and 1 waiting"},
            },
        ],
    }
    s = load.summarise(raw)
    assert s["ok"] == 3 and s["statuses"] == {"200": 3, "503": 1}
    assert s["throughput_rps"] == pytest.approx(3 / 1.0)
    assert s["latency_ms"]["p50"] == pytest.approx(500.0)
    assert s["latency_ms"]["p99"] == pytest.approx(percentile([0.5, 1.0, 0.5], 99) * 1e3)
    assert s["rejections"][0]["message"].endswith("waiting")


# --- report ------------------------------------------------------------------------------------


def _figures() -> list[Figure]:
    return [
        Figure("overhead", "api", 110.0, "ms", "bare", 100.0, 1.1, "api/bare", Target("<", 1.10)),
        Figure(
            "engine",
            "engine",
            100.0,
            "ms",
            "torch",
            150.0,
            1.5,
            "torch/engine",
            Target(">=", 1.3),
            details={"x": float("nan")},
        ),
        Figure("load", "1 client", 2.0, "req/s", "at 1", 2.0, 1.0, "scaling"),
        Figure(
            "load",
            "first 503",
            float("nan"),
            "clients",
            "predicted",
            25.0,
            float("nan"),
            "observed/predicted",
        ),
    ]


def test_status_marks() -> None:
    assert [f.status for f in _figures()] == ["MISS", "PASS", "INFO", "INFO"]
    assert not Target(">=", 1.0).met(float("nan"))


def test_results_json_shape(tmp_path: Path) -> None:
    figures = _figures()
    doc = results_document(
        figures,
        mode="quick",
        machine={"cpu_model": "x"},
        load={"before": {}},
        started="2025-01-01T00:00:00+00:00",
        duration_s=1.0,
        command="python -m bench.run",
        benchmarks={"overhead": {"api_s": {"median": 0.1}}},
    )
    path = write_json(doc, tmp_path / "results", "2025-01-01", "test-2c")
    assert path.name == "2025-01-01-test-2c.json"
    data = json.loads(path.read_text())  # strict JSON: NaN became null
    assert data["schema"] == "verydeep-bench/1"
    assert set(data) >= {"mode", "started", "machine", "load", "summary", "figures", "benchmarks"}
    assert data["summary"] == {"PASS": 1, "MISS": 1, "INFO": 2}
    first = data["figures"][0]
    assert set(first) >= {
        "benchmark",
        "label",
        "value",
        "unit",
        "peer",
        "peer_label",
        "ratio",
        "ratio_label",
        "target",
        "status",
        "details",
    }
    assert first["target"] == {"op": "<", "value": 1.1}
    assert data["figures"][1]["details"]["x"] is None
    assert data["figures"][3]["value"] is None
    table = markdown_table(figures)
    assert table.count("\n") == len(figures) + 1 and "MISS" in table and "n/a" in table


# --- smoke runs on tiny models (real server process, real load generator process) --------------

SMOKE = replace(
    QUICK,
    reps=1,
    warmup=0,
    multicrop_reps=1,
    decode_reps=1,
    load_levels=(1, 2),
    load_requests=(2, 2),
    load_seconds=20.0,
    gemm_size=128,
)


@pytest.fixture(scope="module")
def tiny_ctx(tmp_path_factory: pytest.TempPathFactory):
    cache = tmp_path_factory.mktemp("bench-cache")
    ensure_store(cache, [TINY_D], verify=False)
    env = {
        "VERYDEEP_MAX_CONCURRENCY": "1",
        "VERYDEEP_MAX_QUEUE": "1",
        "VERYDEEP_INTRA_OP_THREADS": "1",
        "VERYDEEP_WARMUP": "false",
    }
    ctx = Context(mode=SMOKE, cache_dir=cache, model=TINY_D, served=(TINY_D,), server_env=env)
    yield ctx
    ctx.close()


def test_smoke_overhead_and_load(tiny_ctx: Context) -> None:
    figures, details = overhead.run(tiny_ctx)
    assert figures[0].value > 0 and figures[0].peer > 0 and figures[0].status in ("PASS", "MISS")
    assert details["breakdown"]["server_total_ms"] > 0
    figures, details = load.run(tiny_ctx)
    assert [lvl["ok"] for lvl in details["levels"]] == [2, 2]
    # One running + one queued: a burst of more than two gets queue-full 503s at once.
    burst = details["probes"][0]
    assert burst["burst"] and burst["statuses"].get("503", 0) >= 1
    assert figures[-1].value == burst["ok"] + 1
    assert figures[-1].peer == 3  # max_concurrency + max_queue + 1


def test_smoke_efficiency_and_decode(tiny_ctx: Context, monkeypatch: pytest.MonkeyPatch) -> None:
    figures, details = efficiency.run(tiny_ctx)
    assert figures[0].unit == "GFLOP/s" and figures[0].ratio > 0
    monkeypatch.setattr(decode, "SIZE", (1600, 1200))
    figures, details = decode.run(tiny_ctx)
    assert details["draft_decoded_size"][1] < 1200  # decoded in draft mode
    agreement = details["agreement"][0]
    assert agreement["size"][1] == decode.Q and agreement["mean_abs_pixel_diff"] < 5


def test_smoke_coldstart_full_mode_adds_the_server_without_cpu_arena(
    tiny_ctx: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tiny_ctx, "mode", replace(SMOKE, name="full"))
    figures, details = coldstart.run(tiny_ctx)
    labels = [f.label for f in figures]
    assert len(figures) == 5
    assert labels[2] == f"{TINY_D.name}: server VmRSS at ready, VERYDEEP_CPU_MEM_ARENA=false"
    assert figures[2].peer == figures[1].value and figures[2].ratio > 0
    assert details["without_cpu_arena"]["memory_at_ready"]["VmRSS"] > 0
    assert labels[3].startswith("demo store: spawn to /readyz 200")


def test_run_writes_results(tiny_ctx: Context, tmp_path: Path) -> None:
    figures, document, path = bench_run.run(["engine"], tiny_ctx, tmp_path, "test")
    assert path.exists() and path.with_suffix(".md").exists()
    assert path.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    assert document["failed"] == [] and document["figures"][0]["benchmark"] == "engine"
    assert document["machine"]["threads"]["onnxruntime_intra_op_threads_setting"] == 1


def test_smoke_batched_and_scales_on_the_cpu(tiny_ctx: Context) -> None:
    """The GPU suite's own benchmarks run on the CPU too (without their CUDA-only figures): the
    scales workers answer from fresh processes, and the CPU peer of a float32 CPU model is the
    same model, so the answers agree exactly."""
    figures, details = batched.run(tiny_ctx)
    assert [f.peer_label for f in figures] == ["1 view per call"] * 3
    assert details["shape_changes"] == {} and details["io_binding"] == {}
    figures, details = scales.run(tiny_ctx)
    assert [f.unit for f in figures] == ["images/s"] * len(scales.SCALES)
    for q in scales.SCALES:
        row = details[f"{TINY_D.name}@{q}"]
        assert row["provider"] == "CPUExecutionProvider" and row["gpu_memory_mib"] is None
        assert row["max_abs_posterior_diff"] == 0 and row["top1_same"]
    assert details[f"{TINY_D.name}@512"]["input"] == [512, 682]


def test_cuda_runs_are_named_after_the_gpu_and_dtype(tmp_path: Path, monkeypatch) -> None:
    from bench import machine

    monkeypatch.setattr(machine, "gpus", lambda: [{"name": "NVIDIA H100 80GB HBM3"}])
    assert machine.slug("cuda") == "nvidia-h100-80gb-hbm3"
    args = bench_run.parse_args(["--device", "cuda", "--fp16"])
    assert args.names == bench_run.CUDA_SUITE and "decode" not in args.names
    assert "batched" not in bench_run.parse_args([]).names


def test_stream_choices_override_the_mode(capsys: pytest.CaptureFixture[str]) -> None:
    args = bench_run.parse_args(
        ["--device", "cuda", "--stream-scales", "default,384", "--stream-levels", "1,16"]
    )
    mode = bench_run.run_mode(args)
    assert mode.stream_scales == ("default", "384") and mode.stream_levels == (1, 16)
    assert mode.stream_requests == bench_run.MODES["quick"].stream_requests
    assert bench_run.run_mode(bench_run.parse_args(["--stream-requests", "5"])).stream_requests == 5
    assert bench_run.run_mode(bench_run.parse_args([])) == bench_run.MODES["quick"]
    assert [m.name for m in bench_run.parse_args(["--models", "vgg19"]).models] == ["vgg19"]
    assert [m.name for m in bench_run.parse_args([]).models] == ["vgg16", "vgg19"]
    bad_args = [["--stream-scales", "200"], ["--stream-levels", "0"], ["--models", "vgg11"]]
    bad_args.append(["--stream-requests", "0"])
    for bad in [*bad_args, ["--stream-scales", "big"]]:
        with pytest.raises(SystemExit):
            bench_run.parse_args(bad)
    assert "neither 'default' nor a Q" in capsys.readouterr().err


def test_gpu_utilization_summarises_what_the_sampler_printed() -> None:
    from bench.machine import GpuUtilization

    fake = ["bash", "-c", "printf '10\\n30\\n50\\n'; sleep 30"]
    with GpuUtilization(command=fake) as utilization:
        time.sleep(0.5)
    assert utilization.summary() == {
        "samples": 3,
        "mean_percent": 30.0,
        "median_percent": 30.0,
        "max_percent": 50.0,
    }
    with GpuUtilization(command=["/nonexistent/nvidia-smi"]) as missing:
        pass
    assert missing.summary() is None


def test_smoke_stream_of_an_ensemble(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--stream-ensemble``: the requests ask for both served models, the network counts are
    both members', and the bare limit spends each member's share at its own rate."""
    from bench import images
    from bench.suites import stream

    second = replace(TINY_D, name="tiny-d2", seed=2)
    cache = tmp_path_factory.mktemp("bench-ensemble")
    ensure_store(cache, [TINY_D, second], verify=False)
    monkeypatch.setattr(images, "STREAM_SIZES", ((1024, 768), (480, 640)))
    mode = replace(
        SMOKE, stream_levels=(1,), stream_requests=2, stream_bare_views=2, stream_ensemble=True
    )
    env = {"VERYDEEP_INTRA_OP_THREADS": "1", "VERYDEEP_WARMUP": "false"}
    ctx = Context(mode=mode, cache_dir=cache, model=TINY_D, served=(TINY_D, second), server_env=env)
    try:
        figures, details = stream.run(ctx)
    finally:
        ctx.close()
    assert details["model"] == "tiny-d,tiny-d2" and set(details["bare"]) == {"tiny-d", "tiny-d2"}
    assert all(f.label.endswith("ensemble tiny-d+tiny-d2") for f in figures)
    single = details["levels"][0]["single"]
    # each image runs both members: 2 views (flip) of 341 x 256 per member, 2 calls
    assert single["network_mpix_per_image"] == pytest.approx(2 * 2 * 341 * 256 / 1e6)
    assert single["network_calls"] == 2 * single["ok"] and single["views_per_call"] == 2
    share = details["levels"][0]["mixed"]["network_mpix_per_image"] / 2
    limit = 1 / sum(share / b["mpix_per_s"] for b in details["bare"].values())
    assert figures[1].peer == pytest.approx(limit)


def test_smoke_stream(tiny_ctx: Context, monkeypatch: pytest.MonkeyPatch) -> None:
    from bench import images
    from bench.suites import stream

    sizes = ((1024, 768), (480, 640), (700, 300))
    monkeypatch.setattr(images, "STREAM_SIZES", sizes)
    mode = replace(SMOKE, stream_levels=(1, 2), stream_requests=3, stream_bare_views=2)
    monkeypatch.setattr(tiny_ctx, "mode", mode)
    monkeypatch.setattr(stream, "needs_first_pass", lambda ctx: True)  # as on CUDA
    figures, details = stream.run(tiny_ctx)
    assert [f.label.split(",")[0] for f in figures] == ["photo stream"] * 2 + [
        "photo stream against the bare limit",
        "photo stream against torch eager",
    ]
    first = details["first_pass"]["256"]  # every photo once, a flip pair at Q=256 each
    assert first["photos"] == len(sizes) and first["network_calls"] == len(sizes)
    assert first["seconds"] > 0 and first["sessions"] == 1
    eager = details["torch_eager"]["256"]
    assert eager["photos"] == len(sizes) and eager["images_per_s"] > 0
    assert figures[-1].ratio == pytest.approx(
        details["levels"][-1]["mixed"]["images_per_s"] / eager["images_per_s"]
    )
    for lvl in details["levels"]:
        for run in (lvl["mixed"], lvl["single"]):
            assert run["ok"] == run["requests"] == 3 * max(1, lvl["clients"] // 2)
            assert run["images_per_s"] > 0 and run["server_cpu_s_per_image"] > 0
            assert run["network_calls"] >= 1 and run["views_per_call"] >= 1
    # one size only: its network pixels per image are those of 1024x768 at Q=256 with flip
    single = details["levels"][0]["single"]
    assert single["network_mpix_per_image"] == pytest.approx(2 * 341 * 256 / 1e6)
    # one CPU session; one shape, so at most the first call changes it (from the mixed level's)
    assert single["sessions"] == 1
    assert single["shape_changes_per_call"] * single["network_calls"] <= 1
    assert figures[0].ratio == pytest.approx(
        details["levels"][0]["mixed"]["network_mpix_per_s"] / single["network_mpix_per_s"]
    )
