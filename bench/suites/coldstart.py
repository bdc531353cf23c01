"""7. Cold start and memory: time from spawning ``verydeep serve`` to the first ``/readyz`` 200,
and the server's resident memory (VmRSS when ready, VmHWM the peak), with the demo store and with
full-size VGG-16 + VGG-19. Peer: a bare process that imports onnxruntime and opens the same ONNX
files with the same options (no web app, no sha256 check, no warm-up), timed the same way. The
full mode on the CPU also starts the full-size server with ``VERYDEEP_CPU_MEM_ARENA=false``.

The page cache is warm (the files were just written or read), as after any restart on a host."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.context import Context
from bench.models import SMALL_D, SMALL_E, ensure_store, onnx_bytes
from bench.report import Figure
from bench.server import Server
from model_store import ModelStore

NAME = "coldstart"
MIB = 2**20
REPO = Path(__file__).resolve().parents[2]
DEMO_STORE = REPO / "model_store"


def bare_load(store: ModelStore, env: dict[str, str]) -> dict:
    files = sorted(str(p) for p in store.root.glob("*/*.onnx"))
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.bare_load", *files],
        cwd=REPO,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    elapsed = time.perf_counter() - started
    process.wait(timeout=60)
    result = json.loads(line)
    result["wall_s"] = elapsed
    return result


def demo_store(ctx: Context) -> tuple[ModelStore, str]:
    """``model_store/`` when it has entries; else two small exported models (said so)."""
    store = ModelStore(DEMO_STORE)
    if DEMO_STORE.is_dir() and store.names():
        return store, "model_store/ (committed demo models)"
    small = ensure_store(ctx.cache_dir, [SMALL_D, SMALL_E])
    return small, (
        "model_store/ has no models yet: stand-in store of two small exported models "
        f"({SMALL_D.name}: config D, {SMALL_E.name}: config E, width 1/8, fc 256, 10 classes)"
    )


def measure(store: ModelStore, label: str, server: Server | None, ctx: Context) -> tuple:
    own = server is None
    if own:
        server = Server(
            store.root,
            ctx.server_env,
            log_path=(ctx.log_dir or ctx.cache_dir) / f"server-{label.replace(' ', '-')}.log",
        ).start()
    try:
        ready_s, ready_mem = server.ready_s, server.ready_memory
        memory_now = server.memory()
    finally:
        if own:
            server.stop()
    bare = bare_load(store, ctx.server_env)
    size = onnx_bytes(store)
    models = store.names()
    figures = [
        Figure(
            benchmark=NAME,
            label=f"{label}: spawn to /readyz 200 ({len(models)} models)",
            value=ready_s,
            unit="s",
            peer_label="bare ORT sessions",
            peer=bare["wall_s"],
            ratio=ready_s / bare["wall_s"],
            ratio_label="serve/bare",
        ),
        Figure(
            benchmark=NAME,
            label=f"{label}: server VmRSS at ready",
            value=ready_mem["VmRSS"] / MIB,
            unit="MiB",
            peer_label="bare ORT sessions",
            peer=bare["memory"]["VmRSS"] / MIB,
            ratio=ready_mem["VmRSS"] / bare["memory"]["VmRSS"],
            ratio_label="serve/bare",
            note=(
                f"VmHWM {ready_mem['VmHWM'] / MIB:,.0f} MiB; ONNX files {size / MIB:,.0f} MiB "
                f"(RSS/files {ready_mem['VmRSS'] / size:.2f})"
            ),
        ),
    ]
    details = {
        "models": models,
        "onnx_bytes": size,
        "ready_s": ready_s,
        "memory_at_ready": ready_mem,
        "memory_when_measured": memory_now,
        "bare": bare,
    }
    return figures, details


def run(ctx: Context) -> tuple[list[Figure], dict]:
    figures, details = [], {}
    server = ctx.server()  # the shared server: its start is the full-size cold start
    full_label = "+".join(s.name for s in ctx.served)
    f, d = measure(ctx.store(), full_label, server, ctx)
    figures += f
    details[full_label] = d
    if not ctx.mode.quick and not ctx.cuda:
        figure, details["without_cpu_arena"] = without_arena(ctx, full_label, d)
        figures.append(figure)
    store, description = demo_store(ctx)
    f, d = measure(store, "demo store" if store.root == DEMO_STORE else "small store", None, ctx)
    figures += f
    details["demo"] = {"description": description, **d}
    return figures, details


def without_arena(ctx: Context, label: str, default: dict) -> tuple[Figure, dict]:
    """The full-size server's memory at ready with onnxruntime's CPU arena off, against the
    default server's: the warm-up's activations are freed after each call instead of kept."""
    env = {**ctx.server_env, "VERYDEEP_CPU_MEM_ARENA": "false"}
    log_path = (ctx.log_dir or ctx.cache_dir) / "server-no-cpu-arena.log"
    server = Server(ctx.store().root, env, log_path=log_path).start()
    try:
        ready_s, memory = server.ready_s, server.ready_memory
    finally:
        server.stop()
    with_arena = default["memory_at_ready"]
    figure = Figure(
        benchmark=NAME,
        label=f"{label}: server VmRSS at ready, VERYDEEP_CPU_MEM_ARENA=false",
        value=memory["VmRSS"] / MIB,
        unit="MiB",
        peer_label="with the arena (default)",
        peer=with_arena["VmRSS"] / MIB,
        ratio=memory["VmRSS"] / with_arena["VmRSS"],
        ratio_label="without/with",
        note=f"VmHWM {memory['VmHWM'] / MIB:,.0f} MiB; ready in {ready_s:.1f} s",
    )
    return figure, {"ready_s": ready_s, "memory_at_ready": memory}
