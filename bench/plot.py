"""``python -m bench.plot RESULTS.json [...]``: the picture of a results file, written beside it
as ``RESULTS.png`` (``bench.run`` draws one after every run; docs/benchmarks.md, "Reading a run").

Left, every figure that has a target, as its headroom: the ratio over the target's value for a
``>=`` target, the target over the ratio for a ``<`` one, on a log axis, so that figures of
different units and targets line up and 1 is the line between PASS and MISS. Right, when the run
has the photo stream: images/s at each level (scales and clients) of the stream of mixed sizes,
of one size, and of the bare onnxruntime limit at the stream's pixel mix, with the stream's p50 and
p99 latency (and, on CUDA, nvidia-smi's mean utilisation) written over its bar.

The pure parts (``target_rows``, ``stream_rows``) read the document; ``draw`` only draws them.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.report import fmt
from bench.suites.stream import bare_limit

COLOURS = {"PASS": "#2e7d32", "MISS": "#c62828"}
LABEL_CHARS = 58
LOCAL = ("--cache", "--out")
"""Options of ``bench.run`` whose values are paths of the machine that ran it."""


@dataclass(frozen=True)
class TargetRow:
    """One targeted figure: ``headroom`` >= 1 where it is met (equality fails a strict one)."""

    label: str
    ratio: float
    target: str
    headroom: float
    status: str


@dataclass(frozen=True)
class StreamRow:
    """One level of the photo stream, in images/s of the stream's pixel mix: ``single`` is the one
    size's network pixels/s over the stream's pixels per image (the ratio the target reads), and
    ``bare`` the bare limit likewise (NaN without a bare figure)."""

    label: str
    mixed: float
    single: float
    bare: float
    p50_ms: float
    p99_ms: float
    gpu_percent: float | None


def headroom(ratio: float, op: str, value: float) -> float:
    """How far a ratio is on the passing side of its target: >= 1 passes a ``>=`` or ``<=``."""
    if ratio is None or not math.isfinite(ratio) or ratio <= 0 or value <= 0:
        return math.nan
    return ratio / value if op.startswith(">") else value / ratio


def shorten(label: str, chars: int = LABEL_CHARS) -> str:
    """A bar's label cut to ``chars`` so that the panel keeps its width."""
    return label if len(label) <= chars else label[: chars - 3] + "..."


def target_rows(document: dict[str, Any]) -> list[TargetRow]:
    """The figures with a target, in the run's order."""
    out = []
    for f in document.get("figures", []):
        target = f.get("target")
        if not target:
            continue
        ratio = math.nan if f.get("ratio") is None else float(f["ratio"])
        out.append(
            TargetRow(
                label=shorten(f"{f['benchmark']}: {f['label']}"),
                ratio=ratio,
                target=f"{target['op']} {target['value']:g}",
                headroom=headroom(ratio, target["op"], float(target["value"])),
                status=f["status"],
            )
        )
    return out


def stream_rows(document: dict[str, Any]) -> list[StreamRow]:
    """The photo stream's levels, with the bare limit at each level's pixel mix."""
    stream = document.get("benchmarks", {}).get("stream") or {}
    bare = stream.get("bare") or {}
    out = []
    for level in stream.get("levels", []):
        mixed, single = level["mixed"], level["single"]
        utilisation = mixed.get("gpu_utilization") or {}
        out.append(
            StreamRow(
                label=f"Q={level['scales']}\n{level['clients']} client(s)",
                mixed=mixed["images_per_s"],
                single=single["network_mpix_per_s"] / mixed["network_mpix_per_image"],
                bare=bare_limit(mixed, bare) if bare else math.nan,
                p50_ms=mixed["latency_ms"]["p50"],
                p99_ms=mixed["latency_ms"]["p99"],
                gpu_percent=utilisation.get("mean_percent"),
            )
        )
    return out


def title(document: dict[str, Any]) -> str:
    """Where and when it ran, what it found, and the command without its local paths."""
    m = document.get("machine", {})
    gpus = m.get("gpus") or []
    where = gpus[0].get("name", "GPU") if gpus and isinstance(gpus[0], dict) else m.get("cpu_model")
    counts = document.get("summary", {})
    words, command = str(document.get("command", "bench")).split(), []
    for n, word in enumerate(words):
        if word not in LOCAL and (n == 0 or words[n - 1] not in LOCAL):
            command.append(word)
    return (
        f"{where}, {m.get('logical_cpus', '?')} CPUs, {str(document.get('started', ''))[:10]}: "
        f"{counts.get('PASS', 0)} PASS, {counts.get('MISS', 0)} MISS\n{' '.join(command)}"
    )


def draw(document: dict[str, Any], path: Path) -> Path:
    """Write the picture of ``document`` to ``path`` (PNG)."""
    targets, stream = target_rows(document), stream_rows(document)
    panels = 2 if targets and stream else 1
    fig, axes = _figure(panels, len(targets))
    if targets or not stream:
        _draw_targets(axes[0], targets)
    if stream:
        _draw_stream(axes[-1], stream)
    return _save(fig, title(document), path)


def draw_targets(rows: list[TargetRow], heading: str, path: Path) -> Path:
    """Write the headroom panel alone for ``rows`` (``bench/gpu_targets.py --png``)."""
    fig, axes = _figure(1, len(rows))
    _draw_targets(axes[0], rows)
    return _save(fig, heading, path)


def _figure(panels: int, rows: int) -> tuple[Any, list[Any]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    height = max(3.0, 0.45 * max(rows, 4) + 1.5)
    fig, axes = plt.subplots(1, panels, figsize=(7.5 * panels + 1.5, height), squeeze=False)
    return fig, list(axes[0])


def _save(fig: Any, heading: str, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.suptitle(heading, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _draw_targets(ax: Any, rows: list[TargetRow]) -> None:
    import matplotlib.ticker

    if not rows:
        ax.text(0.5, 0.5, "no figure with a target", ha="center", va="center")
        ax.set_axis_off()
        return
    ys = range(len(rows))[::-1]
    finite = [r.headroom for r in rows if math.isfinite(r.headroom)] or [1.0]
    missing = min(finite) / 2  # a figure that could not be measured is drawn short, and says so
    widths = [r.headroom if math.isfinite(r.headroom) else missing for r in rows]
    ax.barh(list(ys), widths, color=[COLOURS.get(r.status, "grey") for r in rows], height=0.6)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.axvline(1.0, color="black", linewidth=1)
    for y, r, w in zip(ys, rows, widths, strict=True):
        text = f"{fmt(r.ratio)} ({r.target})"
        ax.text(w, y, f" {text} {r.status}", va="center", fontsize=8)
    ax.set_yticks(list(ys), [r.label for r in rows], fontsize=8)
    ax.set_xlim(min(min(widths), 0.5) / 1.5, max(max(widths), 2.0) * 6)
    ax.set_xlabel("headroom: ratio over target (log); 1 = the target")
    ax.set_title("figures against their targets", fontsize=10)
    ax.grid(axis="x", alpha=0.3, which="both")


def _draw_stream(ax: Any, rows: list[StreamRow]) -> None:
    width = 0.27
    xs = range(len(rows))
    series = (
        ("mixed sizes", [r.mixed for r in rows], "#1565c0"),
        ("one size, at the stream's pixel mix", [r.single for r in rows], "#90a4ae"),
        ("bare onnxruntime limit, likewise", [r.bare for r in rows], "#ffb300"),
    )
    for n, (name, values, colour) in enumerate(series):
        if all(math.isnan(v) for v in values):
            continue
        ax.bar([x + (n - 1) * width for x in xs], values, width, label=name, color=colour)
    for x, r in zip(xs, rows, strict=True):
        note = f"p50 {r.p50_ms:.0f}\np99 {r.p99_ms:.0f} ms"
        if r.gpu_percent is not None:
            note += f"\nGPU {r.gpu_percent:.0f}%"
        ax.text(x - width, r.mixed, note, ha="center", va="bottom", fontsize=7)
    top = max(v for r in rows for v in (r.mixed, r.single, r.bare) if math.isfinite(v))
    ax.set_ylim(0, top * 1.35)
    ax.set_xticks(list(xs), [r.label for r in rows], fontsize=8)
    ax.set_ylabel("images/s")
    ax.set_title("the photo stream", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(axis="y", alpha=0.3)


def is_results(document: object) -> bool:
    """Whether a JSON document is a ``bench.run`` results file (not a probe's output)."""
    return isinstance(document, dict) and str(document.get("schema", "")).startswith(
        "verydeep-bench/"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.plot", description=__doc__.split("\n")[0])
    p.add_argument(
        "results", nargs="+", type=Path,
        help="results files of bench.run (.json); other JSON files, a probe's, are passed over",
    )  # fmt: skip
    args = p.parse_args(argv)
    drawn = 0
    for path in args.results:
        try:
            document = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            print(f"python -m bench.plot: error: cannot read {path}: {err}", file=sys.stderr)
            return 2
        if not is_results(document):
            print(f"passed over {path}: not a bench.run results file", file=sys.stderr)
            continue
        print(draw(document, path.with_suffix(".png")))
        drawn += 1
    if not drawn:
        print("python -m bench.plot: error: no bench.run results file given", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
