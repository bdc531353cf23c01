"""Figures, the printed/README table, and the JSON results file.

Every figure is a measurement beside a peer measured in the same run; ``ratio`` is the number the
target applies to. A missed target is reported (MISS), never raised: this is a measurement.
"""

from __future__ import annotations

import json
import math
import operator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SCHEMA = "verydeep-bench/1"
_OPS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}


@dataclass(frozen=True)
class Target:
    op: str
    value: float

    def __post_init__(self) -> None:
        if self.op not in _OPS:
            raise ValueError(f"unknown target operator {self.op!r}")

    def met(self, ratio: float) -> bool:
        return not math.isnan(ratio) and _OPS[self.op](ratio, self.value)

    def __str__(self) -> str:
        return f"{self.op} {self.value:g}"


@dataclass
class Figure:
    """One line of the table: ``value`` (of ``label``) against ``peer`` (of ``peer_label``), and
    the ``ratio`` the target applies to, defined by ``ratio_label``."""

    benchmark: str
    label: str
    value: float
    unit: str
    peer_label: str
    peer: float
    ratio: float
    ratio_label: str
    target: Target | None = None
    note: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> str:
        if self.target is None:
            return "INFO"
        return "PASS" if self.target.met(self.ratio) else "MISS"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["target"] = None if self.target is None else asdict(self.target)
        data["status"] = self.status
        return _clean(data)


def _clean(value: Any) -> Any:
    """JSON-safe: NaN and infinities become None, tuples lists."""
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def fmt(value: float, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    magnitude = abs(value)
    if magnitude >= 1000:
        text = f"{value:,.0f}"
    elif magnitude >= 100:
        text = f"{value:.0f}"
    elif magnitude >= 10:
        text = f"{value:.1f}"
    elif magnitude >= 1:
        text = f"{value:.2f}"
    else:
        text = f"{value:.3g}"
    return f"{text} {unit}".strip()


COLUMNS = ("benchmark", "figure", "value", "peer", "ratio", "target", "result")


def rows(figures: list[Figure]) -> list[list[str]]:
    out = []
    for f in figures:
        ratio = f"{fmt(f.ratio)} ({f.ratio_label})"
        if f.note:
            ratio += f"; {f.note}"
        out.append(
            [
                f.benchmark,
                f.label,
                fmt(f.value, f.unit),
                f"{fmt(f.peer, f.unit)} {f.peer_label}".strip(),
                ratio,
                str(f.target) if f.target else "-",
                f.status,
            ]
        )
    return out


def markdown_table(figures: list[Figure]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows(figures):
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
    return "\n".join(lines)


def text_table(figures: list[Figure]) -> str:
    table = [list(COLUMNS), *rows(figures)]
    widths = [min(max(len(r[i]) for r in table), 60) for i in range(len(COLUMNS))]
    lines = []
    for n, row in enumerate(table):
        lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def results_document(
    figures: list[Figure],
    *,
    mode: str,
    machine: dict[str, Any],
    load: dict[str, Any],
    started: str,
    duration_s: float,
    command: str,
    benchmarks: dict[str, Any],
) -> dict[str, Any]:
    counts = {s: sum(f.status == s for f in figures) for s in ("PASS", "MISS", "INFO")}
    return _clean(
        {
            "schema": SCHEMA,
            "mode": mode,
            "started": started,
            "duration_s": round(duration_s, 1),
            "command": command,
            "machine": machine,
            "load": load,
            "summary": counts,
            "figures": [f.to_json() for f in figures],
            "benchmarks": benchmarks,
        }
    )


def write_json(document: dict[str, Any], out_dir: Path, date: str, machine_slug: str) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{date}-{machine_slug}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(document, indent=2, allow_nan=False) + "\n")
    tmp.replace(path)
    return path
