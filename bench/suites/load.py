"""6. Throughput under concurrency: requests/s and p50/p95/p99 latency at 1, 2, 4 and 8
concurrent clients, from a load generator PROCESS (``bench/loadgen.py``, closed loop, asyncio +
httpx) against the real ``verydeep serve`` subprocess on 127.0.0.1; then where 503s start with
the configured VERYDEEP_MAX_CONCURRENCY, VERYDEEP_MAX_QUEUE and VERYDEEP_QUEUE_TIMEOUT.

Why a script rather than wrk or hey: neither is installed with the project (``make bench`` must
run from the project's own venv, and httpx is already a pinned dev dependency), wrk needs a Lua
script for a binary POST body, and we want every request's status and error message to tell
queue-full 503s from queue-timeout 503s. At hundreds of milliseconds per request the client's
cost per request (about a millisecond of CPU, reported as ``loadgen_cpu_s``) is negligible.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from bench.context import Context
from bench.report import Figure
from bench.stats import percentile

if TYPE_CHECKING:
    from service.settings import Settings

NAME = "load"
Q = 256


def request_params(ctx: Context) -> dict[str, str]:
    return {"model": ctx.model.name, "scales": str(Q), "flip": "false", "method": "dense"}


def loadgen(
    ctx: Context, concurrency: int, requests: int, duration: float, *, burst: bool = False
) -> dict:
    """Run ``bench.loadgen`` as a subprocess and summarise what it measured."""
    command = [
        sys.executable,
        "-m",
        "bench.loadgen",
        "--url",
        ctx.classify_url(),
        "--body",
        str(ctx.request_jpeg_path()),
        "--concurrency",
        str(concurrency),
        "--requests",
        str(requests),
        "--duration",
        str(duration),
        "--timeout",
        "300",
    ]
    for key, value in request_params(ctx).items():
        command += ["--param", f"{key}={value}"]
    if burst:
        command.append("--burst")
    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        command, capture_output=True, text=True, cwd=repo, timeout=duration + 360, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"bench.loadgen failed ({done.returncode}): {done.stderr[-2000:]}")
    return summarise(json.loads(done.stdout))


def summarise(raw: dict) -> dict:
    """Throughput and latency percentiles of one load-generator run."""
    records = raw["records"]
    ok = [r for r in records if r["status"] == 200]
    latencies = [r["latency_s"] for r in ok]
    statuses = Counter(str(r["status"]) for r in records)
    if ok:
        first = min(r["start_s"] for r in ok)
        last = max(r["start_s"] + r["latency_s"] for r in ok)
        throughput = len(ok) / (last - first) if last > first else math.nan
    else:
        throughput = 0.0
    rejected = [r for r in records if r["status"] == 503]
    return {
        "concurrency": raw["concurrency"],
        "burst": raw["burst"],
        "requests": len(records),
        "ok": len(ok),
        "statuses": dict(statuses),
        "throughput_rps": throughput,
        "latency_ms": {f"p{p}": percentile(latencies, p) * 1e3 for p in (50, 95, 99)}
        | {"max": max(latencies) * 1e3 if latencies else math.nan},
        "rejections": [
            {
                "at_s": round(r["start_s"] + r["latency_s"], 3),
                "latency_ms": round(r["latency_s"] * 1e3, 1),
                "message": (r.get("error") or {}).get("message"),
            }
            for r in rejected
        ],
        "wall_s": raw["wall_s"],
        "loadgen_cpu_s": raw["cpu_s"],
    }


def run(ctx: Context) -> tuple[list[Figure], dict]:
    mode = ctx.mode
    settings = ctx.settings()
    ctx.server()  # started (and warmed) before the clock of any level starts
    levels = [
        loadgen(ctx, c, n, mode.load_seconds)
        for c, n in zip(mode.load_levels, mode.load_requests, strict=True)
    ]
    figures = [_level_figure(level, levels[0]) for level in levels]
    peak = max(level["throughput_rps"] for level in levels)
    onset_figure, predicted, probes = _onset(ctx, settings, peak)
    figures.append(onset_figure)
    details = {
        "request": request_params(ctx),
        "tool": "bench/loadgen.py (asyncio + httpx, closed loop, separate process)",
        "settings": {
            "max_concurrency": settings.max_concurrency,
            "max_queue": settings.max_queue,
            "queue_timeout": settings.queue_timeout,
            "intra_op_threads": settings.intra_op_threads,
        },
        "levels": levels,
        "peak_throughput_rps": peak,
        "predicted_503_onset": predicted,
        "probes": probes,
    }
    return figures, details


def _level_figure(level: dict, base: dict) -> Figure:
    """One closed-loop level's throughput, against one client's."""
    lat = level["latency_ms"]
    return Figure(
        benchmark=NAME,
        label=f"{level['concurrency']} client(s): throughput ({level['ok']} req)",
        value=level["throughput_rps"],
        unit="req/s",
        peer_label="at 1 client",
        peer=base["throughput_rps"],
        ratio=level["throughput_rps"] / base["throughput_rps"],
        ratio_label="scaling",
        note=f"p50 {lat['p50']:.0f} / p95 {lat['p95']:.0f} / p99 {lat['p99']:.0f} ms"
        + _non_200(level),
        details=level,
    )


def _onset(ctx: Context, settings: Settings, peak: float) -> tuple[Figure, dict, list[dict]]:
    """The number of simultaneous clients at which 503s begin, observed with a burst (and, in
    full mode, closed loops either side of it) against the number the admission settings and
    the peak throughput predict."""
    mc, queue, timeout = settings.max_concurrency, settings.max_queue, settings.queue_timeout
    predicted = {
        # a request beyond the running ones and a full queue is refused at once
        "queue_full_at_clients": mc + queue + 1,
        # a queued request is refused after queue_timeout; in that time ~peak * timeout finish
        "queue_timeout_at_clients": math.floor(mc + peak * timeout) + 1,
    }
    onset = min(predicted.values())
    # A burst of more simultaneous requests than can run or queue: the number answered 200 is
    # the most simultaneous clients served without a 503, so the onset is one more.
    burst_size = max(mc + queue + 2, onset + 4)
    burst = loadgen(ctx, burst_size, burst_size, 120.0, burst=True)
    probes = [burst]
    observed = burst["ok"] + 1 if burst["statuses"].get("503") else math.nan
    for offset in ctx.mode.ramp_offsets:  # full mode: closed loops either side of the onset
        c = max(1, onset + offset)
        probes.append(loadgen(ctx, c, 2 * c, ctx.mode.load_seconds + timeout))
    figure = Figure(
        benchmark=NAME,
        label=f"503 onset (simultaneous clients; max_concurrency={mc}, max_queue={queue}, "
        f"queue_timeout={timeout:g}s)",
        value=float(observed),
        unit="clients",
        peer_label="predicted from peak req/s",
        peer=float(onset),
        ratio=observed / onset,
        ratio_label="observed/predicted",
        note=_probe_note(probes),
        details={"predicted": predicted, "probes": probes},
    )
    return figure, predicted, probes


def _non_200(level: dict) -> str:
    bad = {k: v for k, v in level["statuses"].items() if k != "200"}
    return f"; non-200: {bad}" if bad else ""


def _probe_note(probes: list[dict]) -> str:
    parts = []
    for p in probes:
        n503 = p["statuses"].get("503", 0)
        full = sum("waiting" in (r["message"] or "") for r in p["rejections"])
        kind = "burst of" if p["burst"] else "closed loop"
        parts.append(
            f"{kind} {p['concurrency']}: {p['ok']} ok, {n503} x 503 ({full} queue full, "
            f"{n503 - full} queue timeout)"
        )
    return "; ".join(parts)
