"""The GPU targets of the photo stream, read from the results of ``scripts/gpu_suite.sh`` (or of
any ``python -m bench.run`` runs in one folder): ``python -m bench.gpu_targets bench/results-gpu``.

The four targets (docs/gpu.md, "Measuring on a lent GPU machine"), each checked per run
configuration (the ``VERYDEEP_*`` settings a run's server had) and per export:

1. ``mixed``: the stream of mixed photo sizes, default protocol, at least 0.9 of one size's
   network pixels per second, at every client level of the run;
2. ``bare``: the stream at its most clients at least 0.5 of the bare onnxruntime limit of the
   same pixel mix;
3. ``fp16``: float16 at least 1.5 times float32's images/s at every Q, between runs of the same
   configuration, at their most clients;
4. ``overhead``: ``/classify`` of one dense view at most 1.5 times the bare call.

Ensemble runs (``--stream-ensemble``) are reported beside them but are not targets. The table
goes to standard output (Markdown) and, with ``--out``, to a file; ``--png`` draws it as
``bench/plot.py`` draws a run's targets.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.suites.stream import bare_limit

MIXED, BARE, FP16, OVERHEAD = 0.9, 0.5, 1.5, 1.5
SETTINGS_SHOWN = (
    "VERYDEEP_CUDA_SHARED_WEIGHTS", "VERYDEEP_CUDA_SESSIONS", "VERYDEEP_MAX_CONCURRENCY",
    "VERYDEEP_PREPROCESS", "VERYDEEP_BATCH_WINDOW_MS",
)  # fmt: skip


@dataclass(frozen=True)
class Run:
    """One ``bench.run`` result file: its export, its server's settings and its suites."""

    path: Path
    dtype: str
    config: str
    benchmarks: dict
    figures: list[dict]

    @property
    def source(self) -> str:
        return f"{self.path.parent.name}/{self.path.name}"

    @classmethod
    def read(cls, path: Path) -> Run | None:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or "benchmarks" not in data:
            return None  # a probe's output, not a bench.run result
        fp16 = "--fp16" in str(data.get("command", "")) or path.stem.endswith("-fp16")
        env = (data.get("machine") or {}).get("verydeep_env") or {}
        shown = [f"{k.removeprefix('VERYDEEP_')}={env[k]}" for k in SETTINGS_SHOWN if k in env]
        return cls(
            path,
            "float16" if fp16 else "float32",
            " ".join(shown) or "defaults",
            data["benchmarks"],
            data.get("figures") or [],
        )


@dataclass(frozen=True)
class Row:
    target: str
    config: str
    dtype: str
    what: str
    value: float
    goal: float
    source: str  # the result file(s) it comes from

    @property
    def verdict(self) -> str:
        return "PASS" if self.value >= self.goal else "MISS"


def stream_rows(run: Run) -> list[Row]:
    """Targets 1 and 2 of one run's default-protocol stream (reported, not judged, for an
    ensemble's)."""
    stream = run.benchmarks.get("stream")
    if not stream or "levels" not in stream:
        return []
    ensemble = "," in str(stream.get("model", ""))
    levels = [lv for lv in stream["levels"] if lv["scales"] == "default"]
    if not levels:
        return []
    tag = f"ensemble {stream['model']}" if ensemble else str(stream.get("model", ""))
    worst = min(levels, key=_mixed_ratio)
    most = max(levels, key=lambda lv: lv["clients"])
    return [
        Row("mixed" + (" (ensemble)" if ensemble else ""), run.config, run.dtype,
            f"{tag}: stream/one size, worst of {len(levels)} levels "
            f"({worst['clients']} clients: {worst['mixed']['images_per_s']:.1f} img/s"
            f"{_changes(worst['mixed'])})",
            _mixed_ratio(worst), MIXED, run.source),
        Row("bare" + (" (ensemble)" if ensemble else ""), run.config, run.dtype,
            f"{tag}: stream/bare limit at {most['clients']} clients "
            f"({most['mixed']['images_per_s']:.1f} img/s)",
            most["mixed"]["images_per_s"] / bare_limit(most["mixed"], stream["bare"]), BARE,
            run.source),
    ]  # fmt: skip


def _changes(run: dict) -> str:
    """The shape changes per call of a stream level, where its results have them (the cliff:
    each a cuDNN choice again)."""
    changes = run.get("shape_changes_per_call")
    return "" if changes is None else f", {changes:.2f} shape changes/call"


def _mixed_ratio(level: dict) -> float:
    return level["mixed"]["network_mpix_per_s"] / level["single"]["network_mpix_per_s"]


def fp16_rows(runs: list[Run]) -> list[Row]:
    """Target 3: float16 against float32 at each Q, for each configuration measured in both."""
    best: dict[tuple[str, str, str], tuple[float, str]] = {}
    for run in runs:
        stream = run.benchmarks.get("stream") or {}
        if "," in str(stream.get("model", "")):
            continue
        for q in {lv["scales"] for lv in stream.get("levels", [])}:
            most = max((lv for lv in stream["levels"] if lv["scales"] == q),
                       key=lambda lv: lv["clients"])  # fmt: skip
            best[(run.config, q, run.dtype)] = most["mixed"]["images_per_s"], run.source
    rows = []
    for (config, q, dtype), (fp32, fp32_source) in sorted(best.items()):
        if dtype == "float32" and (config, q, "float16") in best:
            fp16, fp16_source = best[(config, q, "float16")]
            rows.append(Row("fp16", config, "both", f"Q={q}: float16 {fp16:.1f} / float32 "
                            f"{fp32:.1f} img/s", fp16 / fp32, FP16,
                            f"{fp16_source}, {fp32_source}"))  # fmt: skip
    return rows


def overhead_rows(run: Run) -> list[Row]:
    """Target 4, written as bare/API so that higher is better like the others: at least 1/1.5."""
    rows = []
    for figure in run.figures:
        if figure.get("benchmark") == "overhead" and figure.get("ratio"):
            ratio = float(figure["ratio"])
            rows.append(Row("overhead", run.config, run.dtype,
                            f"/classify {figure['value']:.2f} ms against bare "
                            f"{figure['peer']:.2f} ms: {ratio:.2f}x (bare/API shown)",
                            1 / ratio, 1 / OVERHEAD, run.source))  # fmt: skip
    return rows


def collect(root: Path) -> list[Row]:
    runs = [run for path in sorted(root.rglob("*.json")) if (run := Run.read(path))]
    rows = [row for run in runs for row in stream_rows(run) + overhead_rows(run)]
    return rows + fp16_rows(runs)


def ordered(rows: list[Row]) -> list[Row]:
    """The table's and the picture's order: by target, configuration and export."""
    return sorted(rows, key=lambda r: (r.target, r.config, r.dtype))


def markdown(rows: list[Row]) -> str:
    lines = [
        "| target | configuration | export | figure | value | goal | verdict | run |",
        "|---|---|---|---|---:|---:|---|---|",
    ]
    for r in ordered(rows):
        verdict = "info" if "ensemble" in r.target else r.verdict
        lines.append(f"| {r.target} | {r.config} | {r.dtype} | {r.what} | {r.value:.3f} | "
                     f">= {r.goal:.3f} | {verdict} | {r.source} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def picture(rows: list[Row], root: Path, path: Path) -> Path:
    """The targets as ``bench/plot.py`` draws a run's: each row's value over its goal on a log
    axis, 1 the line between PASS and MISS (an ensemble's rows grey, as information)."""
    from bench.plot import TargetRow, draw_targets, shorten

    bars = [
        TargetRow(
            label=shorten(f"{r.target}: {r.dtype}, {r.config} ({_stem(r.source)})", 64),
            ratio=r.value,
            target=f">= {r.goal:.3g}",
            headroom=r.value / r.goal,
            status="INFO" if "ensemble" in r.target else r.verdict,
        )
        for r in ordered(rows)
    ]
    return draw_targets(bars, f"GPU targets of {root.name}/ (docs/gpu.md)", path)


def _stem(source: str) -> str:
    """The first result file of a row's source, without folder and suffix."""
    first, *more = source.split(", ")
    return Path(first).stem + (f" +{len(more)}" if more else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="folder of bench.run results (searched deep)")
    parser.add_argument("--out", type=Path, help="also write the table here")
    parser.add_argument("--png", type=Path, help="also draw the targets here (needs matplotlib)")
    args = parser.parse_args(argv)
    rows = collect(args.results)
    if not rows:
        print(f"no stream or overhead results under {args.results}", file=sys.stderr)
        return 1
    table = markdown(rows)
    print(table, end="")
    if args.out:
        args.out.write_text(table)
    if args.png:
        print(picture(rows, args.results, args.png))
    return 0


if __name__ == "__main__":
    sys.exit(main())
