"""``bench.gpu_targets``: the GPU targets read from a folder of ``bench.run`` results, each
figure computed from the runs' own numbers and judged against its goal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import gpu_targets
from bench.report import Figure
from bench.suites import overhead, stream

SHARED = {"VERYDEEP_CUDA_SHARED_WEIGHTS": "true", "VERYDEEP_CUDA_SESSIONS": "16"}


def level(q: str, clients: int, mixed_mpix: float, single_mpix: float, images: float) -> dict:
    mixed = {"images_per_s": images, "network_mpix_per_s": mixed_mpix,
             "network_mpix_per_image": mixed_mpix / images}  # fmt: skip
    return {"scales": q, "clients": clients, "mixed": mixed,
            "single": {"images_per_s": images, "network_mpix_per_s": single_mpix}}  # fmt: skip


def write_run(
    path: Path,
    *,
    fp16: bool = False,
    env: dict[str, str] | None = None,
    model: str = "vgg16",
    levels: list[dict] | None = None,
    figures: list[Figure] | None = None,
) -> None:
    benchmarks: dict = {}
    if levels is not None:
        bare = {name: {"mpix_per_s": 100.0} for name in model.split(",")}
        benchmarks["stream"] = {"model": model, "bare": bare, "levels": levels}
    data = {
        "command": "python -m bench.run --quick --device cuda" + (" --fp16" if fp16 else ""),
        "machine": {"verydeep_env": env or {}},
        "benchmarks": benchmarks,
        "figures": [f.to_json() for f in figures or []],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def rows_by(rows: list[gpu_targets.Row], target: str) -> list[gpu_targets.Row]:
    return [r for r in rows if r.target == target]


def test_mixed_is_the_worst_level_and_bare_the_most_clients(tmp_path: Path) -> None:
    write_run(tmp_path / "shared16" / "a-cuda-fp32.json", env=SHARED, levels=[
        level("default", 1, 90.0, 100.0, 10.0),  # 0.90
        level("default", 8, 170.0, 200.0, 40.0),  # 0.85: the worst
        level("256", 8, 500.0, 500.0, 99.0),  # another Q: not target 1
    ])  # fmt: skip
    rows = gpu_targets.collect(tmp_path)
    (mixed,) = rows_by(rows, "mixed")
    assert mixed.value == pytest.approx(0.85) and mixed.verdict == "MISS"
    assert mixed.config == "CUDA_SHARED_WEIGHTS=true CUDA_SESSIONS=16"
    assert mixed.dtype == "float32" and "8 clients" in mixed.what
    assert "shape changes" not in mixed.what  # results from before they were counted
    (bare,) = rows_by(rows, "bare")
    # 40 images/s of 170/40 = 4.25 Mpix each, against 100 Mpix/s bare: 23.5 images/s limit.
    assert bare.value == pytest.approx(40.0 / (100.0 / 4.25)) and bare.verdict == "PASS"


def test_the_bare_limit_is_the_stream_figures(tmp_path: Path) -> None:
    """The same limit as the stream suite's own figure, for one model and for an ensemble."""
    mixed = {"images_per_s": 30.0, "network_mpix_per_image": 6.0, "network_mpix_per_s": 180.0,
             "latency_ms": {"p50": 1, "p99": 2}}  # fmt: skip
    bare = {"vgg16": {"mpix_per_s": 300.0, "views_per_call": 32},
            "vgg19": {"mpix_per_s": 200.0, "views_per_call": 32}}  # fmt: skip
    for names in (["vgg16"], ["vgg16", "vgg19"]):
        chosen = {n: bare[n] for n in names}
        figure = stream.bare_figure("default", 8, mixed, chosen, names)
        assert gpu_targets.bare_limit(mixed, chosen) == pytest.approx(figure.peer)


def test_fp16_pairs_runs_of_one_configuration_at_each_q(tmp_path: Path) -> None:
    for fp16, rates in ((False, (20.0, 10.0)), (True, (40.0, 12.0))):
        name = "b-cuda-fp16.json" if fp16 else "b-cuda-fp32.json"
        write_run(tmp_path / "q" / name, fp16=fp16, env=SHARED, levels=[
            level("256", 1, 1.0, 1.0, rates[0] / 2), level("256", 8, 1.0, 1.0, rates[0]),
            level("512", 8, 1.0, 1.0, rates[1]),
        ])  # fmt: skip
    # Another configuration measured in float32 only: nothing to pair.
    write_run(tmp_path / "pool4" / "c-cuda-fp32.json", levels=[level("256", 8, 1, 1, 5.0)])
    rows = rows_by(gpu_targets.collect(tmp_path), "fp16")
    assert {(r.what.split(":")[0], round(r.value, 3), r.verdict) for r in rows} == {
        ("Q=256", 2.0, "PASS"),
        ("Q=512", 1.2, "MISS"),
    }


def test_overhead_is_judged_at_one_and_a_half(tmp_path: Path) -> None:
    def figure(api_ms: float, bare_ms: float) -> Figure:
        return Figure(overhead.NAME, "/classify 1 dense view", api_ms, "ms", "bare session.run",
                      bare_ms, api_ms / bare_ms, "api/bare", target=overhead.TARGET)  # fmt: skip

    write_run(tmp_path / "o" / "d-cuda-fp32.json", figures=[figure(3.0, 2.2)])
    write_run(tmp_path / "o" / "d-cuda-fp16.json", fp16=True, figures=[figure(3.0, 1.0)])
    rows = {r.dtype: r for r in rows_by(gpu_targets.collect(tmp_path), "overhead")}
    assert rows["float32"].verdict == "PASS" and "1.36x" in rows["float32"].what
    assert rows["float16"].verdict == "MISS" and "3.00x" in rows["float16"].what


def test_ensembles_are_reported_not_judged_and_other_files_are_skipped(tmp_path: Path) -> None:
    write_run(tmp_path / "e" / "e-cuda-fp32.json", model="vgg16,vgg19",
              levels=[level("default", 8, 50.0, 100.0, 5.0)])  # fmt: skip
    (tmp_path / "e" / "new-shape-cuda.json").write_text(json.dumps({"variants": {}}))
    (tmp_path / "e" / "broken.json").write_text("{")
    rows = gpu_targets.collect(tmp_path)
    assert {r.target for r in rows} == {"mixed (ensemble)", "bare (ensemble)"}
    table = gpu_targets.markdown(rows)
    assert "MISS" not in table and table.count("| info |") == 2


def test_the_command_writes_the_table_and_fails_on_no_results(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert gpu_targets.main([str(tmp_path)]) == 1
    write_run(tmp_path / "r.json", levels=[level("default", 1, 95.0, 100.0, 3.0)])
    out = tmp_path / "targets.md"
    assert gpu_targets.main([str(tmp_path), "--out", str(out)]) == 0
    assert out.read_text() == capsys.readouterr().out
    assert "| mixed | defaults | float32 |" in out.read_text()


def test_the_mixed_row_says_the_shape_changes_per_call(tmp_path: Path) -> None:
    worst = level("default", 8, 170.0, 200.0, 40.0)
    worst["mixed"]["shape_changes_per_call"] = 0.59
    write_run(tmp_path / "pool4" / "a-cuda-fp32.json", levels=[worst])
    (mixed,) = rows_by(gpu_targets.collect(tmp_path), "mixed")
    assert "8 clients: 40.0 img/s, 0.59 shape changes/call" in mixed.what


def test_the_targets_are_drawn_as_headroom_with_ensembles_grey(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from bench import plot

    results = tmp_path / "results"
    write_run(results / "a-cuda-fp32.json", levels=[level("default", 8, 95.0, 100.0, 40.0)])
    write_run(results / "e-cuda-fp32.json", model="vgg16,vgg19",
              levels=[level("default", 8, 50.0, 100.0, 5.0)])  # fmt: skip
    drawn: list = []
    real = plot.draw_targets

    def spy(rows: list, heading: str, path: Path) -> Path:
        drawn.append((rows, heading))
        return real(rows, heading, path)

    monkeypatch.setattr(plot, "draw_targets", spy)
    png = tmp_path / "targets.png"
    assert gpu_targets.main([str(results), "--png", str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG" and capsys.readouterr().out.endswith(f"{png}\n")
    ((rows, heading),) = drawn
    assert heading == "GPU targets of results/ (docs/gpu.md)"
    by_label = {r.label: r for r in rows}
    mixed = by_label["mixed: float32, defaults (a-cuda-fp32)"]
    assert mixed.headroom == pytest.approx(0.95 / 0.9) and mixed.status == "PASS"
    bare = by_label[
        "bare: float32, defaults (a-cuda-fp32)"
    ]  # 40 img/s against 100 / (95 / 40) = 42.1
    assert bare.headroom == pytest.approx((40.0 / (100.0 / (95.0 / 40.0))) / 0.5)
    assert by_label["mixed (ensemble): float32, defaults (e-cuda-fp32)"].status == "INFO"
    assert [r.target for r in rows] == [">= 0.5", ">= 0.5", ">= 0.9", ">= 0.9"]
