"""The picture of a results file (bench/plot.py): what it reads from the document, that it draws
every committed results file, and that bench.run draws one beside its JSON."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
from PIL import Image

from bench import plot
from bench.report import Figure, Target, results_document
from bench.suites.stream import bare_limit

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"


def _level(scales: str, clients: int, mixed_ips: float, mpix_per_image: float) -> dict:
    mixed = {
        "images_per_s": mixed_ips,
        "network_mpix_per_s": mixed_ips * mpix_per_image,
        "network_mpix_per_image": mpix_per_image,
        "latency_ms": {"p50": 600.0, "p99": 1000.0},
    }
    single = {"images_per_s": 2.0, "network_mpix_per_s": 0.35, "network_mpix_per_image": 0.175}
    return {"scales": scales, "clients": clients, "mixed": mixed, "single": single}


def _document(*, stream: bool = True) -> dict:
    figures = [
        Figure("overhead", "api", 0.26, "s", "bare", 0.25, 1.04, "api/bare", Target("<", 1.1)),
        Figure("decode", "draft", 36.0, "ms", "full", 87.0, 2.4, "full/draft", Target(">=", 3)),
        Figure("load", "1 client", 3.0, "req/s", "1 client", 3.0, 1.0, "scaling"),
        Figure("int8", "one view", 69.0, "ms", "fp32", 257.0, math.nan, "x", Target(">=", 1.8)),
    ]
    benchmarks: dict = {}
    if stream:
        benchmarks["stream"] = {
            "bare": {"vgg16": {"views_per_call": 8, "mpix_per_s": 0.32}},
            "levels": [_level("256", 1, 1.5, 0.206), _level("256", 4, 1.7, 0.206)],
        }
    return json.loads(
        json.dumps(
            results_document(
                figures,
                mode="quick",
                machine={"cpu_model": "Test CPU", "logical_cpus": 2, "gpus": []},
                load={},
                started="2026-12-03T14:00:00+00:00",
                duration_s=1.0,
                command="python -m bench.run --quick --cache /tmp/c --out /tmp/o",
                benchmarks=benchmarks,
            )
        )
    )


def _png_size(path: Path) -> tuple[int, int]:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as im:
        return im.size


def test_headroom_is_one_at_the_target_whichever_way_it_points() -> None:
    assert plot.headroom(3.0, ">=", 3.0) == 1.0
    assert plot.headroom(6.0, ">=", 3.0) == 2.0
    assert plot.headroom(0.55, "<", 1.1) == 2.0  # half the allowed ratio: twice the room
    assert plot.headroom(2.2, "<=", 1.1) == 0.5
    assert math.isnan(plot.headroom(math.nan, ">=", 1.0))
    assert math.isnan(plot.headroom(0.0, "<", 1.0))


def test_target_rows_are_the_targeted_figures_in_order() -> None:
    rows = plot.target_rows(_document())
    assert [r.label for r in rows] == ["overhead: api", "decode: draft", "int8: one view"]
    assert [r.status for r in rows] == ["PASS", "MISS", "MISS"]
    assert [r.target for r in rows] == ["< 1.1", ">= 3", ">= 1.8"]
    assert rows[0].headroom == pytest.approx(1.1 / 1.04)
    assert rows[1].headroom == pytest.approx(2.4 / 3)
    assert math.isnan(rows[2].ratio) and math.isnan(rows[2].headroom)  # NaN was written as null


def test_long_labels_are_cut() -> None:
    document = _document()
    document["figures"][0]["label"] = "x" * 100
    label = plot.target_rows(document)[0].label
    assert len(label) == plot.LABEL_CHARS and label.endswith("...")


def test_stream_rows_put_every_bar_in_images_per_second_of_the_streams_mix() -> None:
    document = _document()
    rows = plot.stream_rows(document)
    assert [r.label for r in rows] == ["Q=256\n1 client(s)", "Q=256\n4 client(s)"]
    first = rows[0]
    assert first.mixed == 1.5
    # One size ran 0.35 Mpx/s; the stream's images have 0.206 Mpx each.
    assert first.single == pytest.approx(0.35 / 0.206)
    level = document["benchmarks"]["stream"]["levels"][0]
    assert first.bare == pytest.approx(bare_limit(level["mixed"], {"m": {"mpix_per_s": 0.32}}))
    assert first.bare == pytest.approx(0.32 / 0.206)
    assert (first.p50_ms, first.p99_ms, first.gpu_percent) == (600.0, 1000.0, None)


def test_stream_rows_read_the_gpu_utilisation_and_need_no_bare_figure() -> None:
    document = _document()
    stream = document["benchmarks"]["stream"]
    del stream["bare"]
    stream["levels"][1]["mixed"]["gpu_utilization"] = {"mean_percent": 41.5}
    rows = plot.stream_rows(document)
    assert math.isnan(rows[0].bare) and rows[1].gpu_percent == 41.5
    assert plot.stream_rows(_document(stream=False)) == []


def test_title_leaves_out_local_paths() -> None:
    text = plot.title(_document())
    assert text == "Test CPU, 2 CPUs, 2026-12-03: 1 PASS, 2 MISS\npython -m bench.run --quick"


@pytest.mark.parametrize("stream", [True, False])
def test_draw_writes_a_png_one_panel_wider_with_the_stream(tmp_path: Path, stream: bool) -> None:
    path = plot.draw(_document(stream=stream), tmp_path / "r.png")
    width, height = _png_size(path)
    assert width == (1485 if stream else 810)  # (7.5 inches a panel + 1.5) at 90 dpi
    assert height >= 270


def test_draw_says_when_no_figure_has_a_target(tmp_path: Path) -> None:
    document = _document(stream=False)
    document["figures"] = [f for f in document["figures"] if not f["target"]]
    assert plot.target_rows(document) == []
    assert _png_size(plot.draw(document, tmp_path / "r.png"))[0] == 810


def test_every_committed_results_file_is_read_and_the_latest_drawn(tmp_path: Path) -> None:
    documents = {}
    for path in sorted(RESULTS.glob("*.json")):
        document = json.loads(path.read_text())
        if plot.is_results(document):
            documents[path.name] = document
            targeted = [f for f in document["figures"] if f.get("target")]
            assert len(plot.target_rows(document)) == len(targeted)
            levels = (document["benchmarks"].get("stream") or {}).get("levels", [])
            assert len(plot.stream_rows(document)) == len(levels)
    assert len(documents) >= 10
    cpu = [n for n in documents if "epyc" in n or "xeon" in n]
    gpu = [n for n in documents if "cuda" in n]
    for name in (max(cpu), max(gpu)):
        assert _png_size(plot.draw(documents[name], tmp_path / f"{name}.png"))[1] >= 270


def test_command_draws_beside_each_file_and_passes_over_probes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results, probe = tmp_path / "run.json", tmp_path / "probe.json"
    results.write_text(json.dumps(_document()))
    probe.write_text(json.dumps({"shapes": [1, 2]}))
    assert plot.main([str(results), str(probe)]) == 0
    assert (tmp_path / "run.png").exists() and not (tmp_path / "probe.png").exists()
    out, err = capsys.readouterr()
    assert out.strip() == str(tmp_path / "run.png")
    assert f"passed over {probe}: not a bench.run results file" in err


def test_command_refuses_unreadable_files_and_no_results(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    probe, broken = tmp_path / "probe.json", tmp_path / "broken.json"
    probe.write_text("{}")
    broken.write_text("{")
    assert plot.main([str(probe)]) == 2
    assert "no bench.run results file given" in capsys.readouterr().err
    assert plot.main([str(broken)]) == 2
    assert f"cannot read {broken}" in capsys.readouterr().err
    assert plot.main([str(tmp_path / "absent.json")]) == 2


def test_a_run_keeps_its_results_when_the_picture_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from bench import run as bench_run

    def no_matplotlib(document: dict, path: Path) -> Path:
        raise ModuleNotFoundError("No module named 'matplotlib'")

    monkeypatch.setattr(plot, "draw", no_matplotlib)
    path = tmp_path / "r.png"
    path.write_bytes(b"an earlier run's picture")
    with caplog.at_level(logging.WARNING, logger="bench"):
        bench_run.picture(_document(), path)
    assert not path.exists()
    assert "picture not drawn (ModuleNotFoundError" in caplog.text
    assert f"python -m bench.plot {tmp_path / 'r.json'} draws it" in caplog.text
