"""10. The photo stream (docs/benchmarks.md, "The photo stream"): real traffic, photos of 18
sizes (``images.STREAM_SIZES``: 1:1 to 21:9, both orientations, 0.3 to 12 MP, JPEG) drawn at
random per request, through the real ``verydeep serve``, by closed-loop clients
(``bench/loadgen.py``) at several concurrencies, with each model's test scales or a given Q, flip.

Peers in the same run:
- the same clients sending one photo size only (1024x768): the figure's ratio is the stream's
  network pixels per second over the single size's, so that it measures what variety costs
  (new shapes, no shared batches), not that a 21:9 photo has more pixels than a 4:3 one;
- the bare onnxruntime limit: ``session.run`` on ``bare_views`` views of one shape per call,
  as network pixels per second, turned into images/s of the stream's own pixel mix;
- torch eager (cuDNN on CUDA) on the same photos' dense views, one photo after the other, what a
  user would write (``eager_images_per_s``).

On CUDA, before the timed levels of each choice of Q, every photo is sent once
(``first_pass``): the levels measure a server that has seen its traffic's shapes, and what that
first sight cost (a cuDNN choice per new shape and session) is reported beside them.

Also reported per level: p50 and p99 latency, the server's CPU seconds per image, the shape
changes per network call (``verydeep_session_shape_changes_total``: on CUDA each is a cuDNN
choice again) and the sessions open, and on CUDA the GPU memory and nvidia-smi's utilisation
while the level ran. With the mode's
``stream_ensemble`` (``--stream-ensemble``) the requests ask for every served model as one
ensemble (``model=vgg16,vgg19``); the bare limit is then the members' bare figures summed as the
ensemble spends them (one image costs each member its pixels).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench import images, machine
from bench.common import bare_session
from bench.context import Context
from bench.models import cache_root
from bench.report import Figure, Target
from bench.stats import percentile

NAME = "stream"
SINGLE = (1024, 768)
SEED = 7


def photos(ctx: Context) -> list[Path]:
    """The stream's JPEGs, written once into the cache (the 12 MP one takes a few seconds)."""
    folder = cache_root(ctx.cache_dir) / "stream"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (w, h) in enumerate(images.STREAM_SIZES):
        path = folder / f"photo-{w}x{h}-q90-seed{i}.jpg"
        if not path.exists():
            path.write_bytes(images.jpeg(w, h, seed=i, quality=90))
        paths.append(path)
    return paths


def network_pixels(size: tuple[int, int], scales: list[int], flip: bool) -> int:
    """N x H x W the dense protocol runs for a photo of ``size`` at ``scales``."""
    from model_store.imaging import rescaled_size

    views = 2 if flip else 1
    return sum(views * np.prod(rescaled_size(*size, q)) for q in scales)


def members(ctx: Context) -> list[str]:
    """The models one stream request runs: the benchmarked one, or every served one."""
    return [s.name for s in ctx.served] if ctx.mode.stream_ensemble else [ctx.model.name]


def run(ctx: Context) -> tuple[list[Figure], dict]:
    server = ctx.server()
    paths = photos(ctx)
    single = paths[images.STREAM_SIZES.index(SINGLE)]
    entry = ctx.model_entry()
    names = members(ctx)
    store = ctx.store()
    bare = {name: bare_pixels_per_s(ctx, store.read(name, verify=False)) for name in names}
    figures, levels, eager, first = [], [], {}, {}
    nets = eager_nets(ctx)
    for choice in ctx.mode.stream_scales:
        scales = list(entry.manifest.test_scales) if choice == "default" else [int(choice)]
        params = {"model": ",".join(names), "flip": "true", "method": "dense"}
        if choice != "default":
            params["scales"] = choice
        if needs_first_pass(ctx):
            first[choice] = first_pass(ctx, server, paths, params)
        # Network pixels of one image, over the members (the ensemble's scales: its first's).
        work = [len(names) * network_pixels(s, scales, True) for s in images.STREAM_SIZES]
        for clients in ctx.mode.stream_levels:
            mixed = level(ctx, server, paths, work, clients, params)
            alone = level(ctx, server, [single], [work[paths.index(single)]], clients, params)
            levels.append({"scales": choice, "clients": clients, "mixed": mixed, "single": alone})
            figures.append(stream_figure(choice, clients, mixed, alone, names))
            if clients == max(ctx.mode.stream_levels):
                figures.append(bare_figure(choice, clients, mixed, bare, names))
        eager[choice] = eager_images_per_s(ctx, nets, paths, scales)
        figures.append(eager_figure(choice, levels[-1]["mixed"], eager[choice], names))
    details = {
        "sizes": [list(s) for s in images.STREAM_SIZES],
        "single_size": list(SINGLE),
        "model": ",".join(names),
        "bare": bare,
        "torch_eager": eager,
        "first_pass": first,
        "levels": levels,
        "settings": {"batch_window_ms": ctx.settings().batch_window_ms},
    }
    return figures, details


def needs_first_pass(ctx: Context) -> bool:
    """Whether the levels need the stream's shapes seen first: on CUDA only (a cuDNN choice per
    new shape and session); on the CPU one session runs every shape with nothing to choose, so
    a first pass would only cost time."""
    return ctx.cuda


def first_pass(ctx: Context, server, paths: list[Path], params: dict[str, str]) -> dict:
    """Every stream photo once, one after another, before the timed levels: a server that has
    run for a while has seen its traffic's shapes, and on CUDA the first call of a shape in a
    session costs a cuDNN choice of algorithms that later calls do not pay. What that first
    sight cost is reported beside the levels (``first_pass`` in the details)."""
    import httpx

    before = counts(server, ctx)
    started = time.perf_counter()
    with httpx.Client(timeout=600) as client:
        for path in paths:
            response = client.post(
                server.url + "/classify",
                params=params,
                content=path.read_bytes(),
                headers={"content-type": "image/jpeg"},
            )
            response.raise_for_status()
    seconds, after = time.perf_counter() - started, counts(server, ctx)
    return {
        "photos": len(paths),
        "seconds": seconds,
        "network_calls": after["calls"] - before["calls"],
        "shape_changes": after["shape_changes"] - before["shape_changes"],
        "sessions": after["sessions"],
    }


def level(
    ctx: Context,
    server,  # bench.server.Server
    bodies: list[Path],
    work: list[int],
    clients: int,
    params: dict[str, str],
) -> dict:
    """One closed-loop run of ``clients`` over ``bodies``: throughput, latency, CPU per image."""
    requests = ctx.mode.stream_requests * max(1, clients // 2)
    cpu_before, before = process_cpu_s(server.pid), counts(server, ctx)
    with machine.GpuUtilization() as utilization:
        raw = loadgen(server.url + "/classify", bodies, clients, requests, params)
    cpu_s, after = process_cpu_s(server.pid) - cpu_before, counts(server, ctx)
    calls, views, changes = (after[k] - before[k] for k in ("calls", "views", "shape_changes"))
    ok = [r for r in raw["records"] if r["status"] == 200]
    if not ok:
        raise RuntimeError(f"no request succeeded: {raw['records'][:3]}")
    span = max(r["start_s"] + r["latency_s"] for r in ok) - min(r["start_s"] for r in ok)
    latencies = [r["latency_s"] for r in ok]
    images_per_s = len(ok) / span
    mean_work = float(np.mean([work[r["body"]] for r in ok]))
    result = {
        "requests": len(raw["records"]),
        "ok": len(ok),
        "images_per_s": images_per_s,
        "network_mpix_per_s": images_per_s * mean_work / 1e6,
        "network_mpix_per_image": mean_work / 1e6,
        "latency_ms": {
            "p50": percentile(latencies, 50) * 1e3,
            "p99": percentile(latencies, 99) * 1e3,
        },
        "server_cpu_s_per_image": cpu_s / len(ok),
        "network_calls": calls,
        "views_per_call": views / calls if calls else float("nan"),
        # On CUDA each shape change makes cuDNN choose again: the cliff, counted (SessionPool).
        "shape_changes_per_call": changes / calls if calls else float("nan"),
        "sessions": after["sessions"],
    }
    if ctx.cuda:
        result["gpu_memory_mib"] = machine.gpu_memory_mib(server.pid)
        result["gpu_utilization"] = utilization.summary()
    return result


COUNTS = {
    "calls": "verydeep_network_calls_total",
    "views": "verydeep_network_views_total",
    "shape_changes": "verydeep_session_shape_changes_total",
    "sessions": "verydeep_sessions",
}


def counts(server, ctx: Context) -> dict[str, float]:
    """The server's network counts (``COUNTS``) now, summed over the stream's models, from one
    scrape of ``/metrics``."""
    names = members(ctx)
    samples = [f'{metric}{{model="{name}"}}' for metric in COUNTS.values() for name in names]
    values = server.metrics(samples)
    return {key: sum(values[i * len(names) : (i + 1) * len(names)]) for i, key in enumerate(COUNTS)}


def loadgen(url: str, bodies: list[Path], clients: int, requests: int, params: dict) -> dict:
    command = [sys.executable, "-m", "bench.loadgen", "--url", url, "--seed", str(SEED)]
    command += ["--concurrency", str(clients), "--requests", str(requests), "--duration", "900"]
    command += ["--timeout", "600"]
    for body in bodies:
        command += ["--body", str(body)]
    for key, value in params.items():
        command += ["--param", f"{key}={value}"]
    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run(command, capture_output=True, text=True, cwd=repo, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"bench.loadgen failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout)


def bare_pixels_per_s(ctx: Context, entry) -> dict:
    """The bare session's network pixels per second on ``bare_views`` 224 x 224 views a call."""
    session = bare_session(entry, ctx.settings(), ctx.device)
    n = ctx.mode.stream_bare_views
    batch = np.zeros((n, 3, 224, 224), dtype=entry.manifest.onnx.dtype)
    name = entry.manifest.onnx.input
    session.run(None, {name: batch})  # warm-up
    times = []
    for _ in range(3):
        started = time.perf_counter()
        session.run([entry.manifest.onnx.output], {name: batch})
        times.append(time.perf_counter() - started)
    seconds = float(np.median(times))
    del session
    return {
        "views_per_call": n,
        "seconds_per_call": seconds,
        "mpix_per_s": n * 224 * 224 / seconds / 1e6,
    }


def ensemble_label(names: list[str]) -> str:
    return f", ensemble {'+'.join(names)}" if len(names) > 1 else ""


def eager_nets(ctx: Context) -> list:
    """The stream's models in torch, fully convolutional, on the run's device and dtype (built
    once per run: a full-size VGG takes seconds to build)."""
    import torch

    from bench.models import build_torch
    from training.fully_conv import to_fully_convolutional

    device, dtype = torch.device(ctx.device), getattr(torch, ctx.dtype)
    specs = [s for s in ctx.served if s.name in members(ctx)]
    return [to_fully_convolutional(build_torch(s)).eval().to(device, dtype) for s in specs]


def eager_images_per_s(ctx: Context, nets: list, paths: list[Path], scales: list[int]) -> dict:
    """The peer a user would write: every stream photo once, its dense flip pair at each scale
    through the same nets (``eager_nets``) in torch eager (cuDNN on CUDA, its defaults), in the
    export's dtype, numpy in and out, one after the other; images/s of those network calls
    alone (the inputs are the service's own, made beforehand)."""
    import torch

    from bench.common import preprocessed

    device, dtype = torch.device(ctx.device), getattr(torch, ctx.dtype)
    entry = ctx.store().read(members(ctx)[0], verify=False)
    pairs = []
    for path in paths:
        data = path.read_bytes()
        for q in scales:
            x = preprocessed(data, entry, q)
            pairs.append(np.ascontiguousarray(np.stack([x, x[:, :, ::-1]])))

    def one_pass(pairs: list[np.ndarray]) -> float:
        started = time.perf_counter()
        with torch.inference_mode():
            for pair in pairs:
                for net in nets:
                    net(torch.from_numpy(pair).to(device, dtype)).float().cpu().numpy()
        return time.perf_counter() - started

    # Warm-up: on CUDA cuDNN's choice for every shape and the allocator; on the CPU, with
    # nothing chosen per shape, one pair (a float16 pass of the stream takes a minute there).
    one_pass(pairs if ctx.cuda else pairs[:1])
    seconds = one_pass(pairs)
    return {"photos": len(paths), "seconds": seconds, "images_per_s": len(paths) / seconds}


def eager_figure(choice: str, mixed: dict, eager: dict, names: list[str]) -> Figure:
    return Figure(
        benchmark=NAME,
        label=f"photo stream against torch eager, Q={choice}{ensemble_label(names)}",
        value=mixed["images_per_s"],
        unit="images/s",
        peer_label=f"torch eager on the stream's {eager['photos']} photos' views, one at a time",
        peer=eager["images_per_s"],
        ratio=mixed["images_per_s"] / eager["images_per_s"],
        ratio_label="stream (most clients)/torch eager",
    )


def stream_figure(choice: str, clients: int, mixed: dict, alone: dict, names: list[str]) -> Figure:
    return Figure(
        benchmark=NAME,
        label=f"photo stream, {len(images.STREAM_SIZES)} sizes, Q={choice}, flip, "
        f"{clients} client(s){ensemble_label(names)}",
        value=mixed["images_per_s"],
        unit="images/s",
        peer_label=f"one size ({SINGLE[0]}x{SINGLE[1]})",
        peer=alone["images_per_s"],
        ratio=mixed["network_mpix_per_s"] / alone["network_mpix_per_s"],
        ratio_label="network pixels/s, stream/single size",
        target=Target(">=", 0.9),
        note=(
            f"p50 {mixed['latency_ms']['p50']:.0f} / p99 {mixed['latency_ms']['p99']:.0f} ms; "
            f"server CPU {mixed['server_cpu_s_per_image']:.2f} s/image; "
            f"{mixed['views_per_call']:.2f} views/call; "
            f"{mixed['shape_changes_per_call']:.2f} shape changes/call over "
            f"{mixed['sessions']:.0f} session(s)"
        ),
        details={"mixed": mixed, "single": alone},
    )


def bare_figure(
    choice: str, clients: int, mixed: dict, bare: dict[str, dict], names: list[str]
) -> Figure:
    """The stream against the bare limit (``bare_limit``)."""
    limit = bare_limit(mixed, bare)
    views = next(iter(bare.values()))["views_per_call"]
    return Figure(
        benchmark=NAME,
        label=f"photo stream against the bare limit, Q={choice}, {clients} client(s)"
        f"{ensemble_label(names)}",
        value=mixed["images_per_s"],
        unit="images/s",
        peer_label=f"bare session.run of {views} views, at the stream's pixel mix",
        peer=limit,
        ratio=mixed["images_per_s"] / limit,
        ratio_label="stream/bare",
        note="the GPU target is >= 0.5 (docs/benchmarks.md)",
    )


def bare_limit(mixed: dict, bare: dict[str, dict]) -> float:
    """Images/s of bare calls at the stream's pixel mix: each member spends its share of an
    image's network pixels at its own bare rate, so the limit is one image over the sum of
    those times."""
    share = mixed["network_mpix_per_image"] / len(bare)
    return 1 / sum(share / b["mpix_per_s"] for b in bare.values())


def process_cpu_s(pid: int | None) -> float:
    """User + system CPU seconds of process ``pid`` and its threads so far."""
    if pid is None:
        return float("nan")
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
