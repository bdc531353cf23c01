#!/usr/bin/env python
"""What makes a new input shape cheap on the GPU (docs/gpu.md, "What the GPU figures say"):
photos of N sizes in turn, one dense view each, through onnxruntime sessions opened as the
service opens them (``service.core.sessions.session_setup``), kept four ways:

- ``one_session``: one session for every shape (each call changes its shape);
- ``pool4``: the service's ``SessionPool`` of 4 sessions, least recently used first (with more
  than 4 shapes in turn, every call lands on a session last used for another shape);
- ``per_shape_copies``: a session per shape, each holding its own copy of the weights;
- ``per_shape_shared``: a session per shape, all of them given the same weights, one copy on
  the device, as the service does with ``VERYDEEP_CUDA_SHARED_WEIGHTS``
  (``service.core.shared_weights.SharedWeights``: ``SessionOptions.add_initializer`` with
  ``OrtValue``s made on the device, which onnxruntime uses in place of the file's), each
  session opening the weightless ``skeleton`` of the graph;
- ``per_shape_shared_whole``: the same, each session parsing the whole file (the open time
  that the skeleton saves).

For each: seconds to open the sessions, device memory they took (``nvidia-smi`` on CUDA, the
process's resident memory on the CPU), the median ms of a call in the first round (every shape
new to its session) and in the later rounds, and the largest |difference| of its scores from
``one_session``'s; beside them, ``same_shape``: one shape over and over (the floor).

    python bench/probes/new_shape_gpu.py --device cuda bench/results/new-shape-cuda.json
    python bench/probes/new_shape_gpu.py --device cuda --fp16 bench/results/new-shape-cuda-fp16.json
    python bench/probes/new_shape_gpu.py --device cpu --model tiny /tmp/new-shape-cpu.json  # dry

``--device cpu`` is the dry mode (the same JSON keys), so that the script is known to work before
a GPU session runs it. The model is the benchmarks' cached random-weight VGG-16 export
(``bench/models.py``; ``--model tiny`` a narrow D), the shapes the bench stream's photo sizes
rescaled to Q = 256 (``bench/images.py``), one view per call.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.images import STREAM_SIZES  # noqa: E402
from bench.models import TINY_D, VGG16, ensure_store  # noqa: E402
from model_store.imaging import rescaled_size  # noqa: E402
from service.core import sessions  # noqa: E402
from service.core.session_pool import SessionPool  # noqa: E402
from service.core.shared_weights import SharedWeights  # noqa: E402


def device_memory(device: str) -> int:
    """Bytes in use: on CUDA the GPU's (nvidia-smi), on the CPU this process's resident set."""
    if device == "cuda":
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        return int(out.split()[0]) * 1024 * 1024
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def open_sessions(kind: str, n: int, model_bytes: bytes, args) -> tuple:
    import onnxruntime as ort

    def setup():
        return sessions.session_setup(
            args.device, prefer_nhwc=sessions.prefers_nhwc("auto", args.dtype)
        )

    keep: list = []
    if kind.startswith("per_shape_shared"):
        options, providers = setup()
        if args.device == "cpu":
            # Measured on the CPU (2026-12-01, VGG-16): with every optimisation, the NCHWc
            # layout transform writes reordered weights per session (565 MiB each); without it
            # (EXTENDED) the sessions share the weights but a call runs 1.6x slower.
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        # The service's own sharing (VERYDEEP_CUDA_SHARED_WEIGHTS): every initializer one
        # OrtValue on the device, given to each session by add_initializer; each session opens
        # the weightless skeleton, or (``_whole``) parses the whole file as before 2026-12-01.
        weights = SharedWeights(model_bytes, args.device)
        if kind.endswith("_whole"):
            weights.add_to(options, file=True)
            made = [ort.InferenceSession(model_bytes, options, providers=providers)
                    for _ in range(n)]  # fmt: skip
        else:
            def open_graph(graph, opts):
                try:
                    return ort.InferenceSession(graph, opts, providers=providers)
                except Exception as err:  # as the engine: its refusal an EngineError
                    raise sessions.EngineError(str(err)) from None

            def new_options():
                fresh = setup()[0]
                fresh.graph_optimization_level = options.graph_optimization_level
                return fresh

            open_one = weights.opener(open_graph, new_options)
            made = [open_one() for _ in range(n)]
        weights.release()
        keep.append(weights)
    else:
        count = {"one_session": 1, "pool4": 4, "per_shape_copies": n}[kind]
        made = []
        for _ in range(count):
            options, providers = setup()
            made.append(ort.InferenceSession(model_bytes, options, providers=providers))
    return made, keep


def run_variant(kind: str, model_bytes: bytes, shapes: list, args) -> dict:
    before = device_memory(args.device)
    started = time.perf_counter()
    made, keep = open_sessions(kind, len(shapes), model_bytes, args)
    opened_s = time.perf_counter() - started
    memory = device_memory(args.device) - before
    pool = SessionPool(made) if kind == "pool4" else None
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal((1, 3, h, w), dtype=np.float32).astype(args.dtype)
              for h, w in shapes]  # fmt: skip
    first, later, outputs = [], [], {}
    for round_ in range(args.rounds):
        for i, x in enumerate(inputs):
            if pool is not None:
                session = pool.for_shape(x.shape)
            else:
                session = made[i] if kind.startswith("per_shape") else made[0]
            t0 = time.perf_counter()
            (scores,) = session.run(["scores"], {"image": x})
            (first if round_ == 0 else later).append(1000 * (time.perf_counter() - t0))
            outputs[i] = scores.astype(np.float32)
    # Whether the shared sessions needed the file (an optimiser read weights from the graph).
    reads = {"reads_weights": keep[0].reads_weights} if keep else {}
    del made, keep
    return {
        **reads,
        "sessions": {"one_session": 1, "pool4": 4}.get(kind, len(shapes)),
        "open_s": round(opened_s, 3),
        "memory_bytes": memory,
        "first_round_ms": round(statistics.median(first), 3),
        "later_rounds_ms": round(statistics.median(later), 3) if later else None,
        "outputs": outputs,
    }


def same_shape(model_bytes: bytes, shape: tuple[int, int], args) -> float:
    import onnxruntime as ort

    options, providers = sessions.session_setup(
        args.device, prefer_nhwc=sessions.prefers_nhwc("auto", args.dtype)
    )
    session = ort.InferenceSession(model_bytes, options, providers=providers)
    x = np.random.default_rng(1).standard_normal((1, 3, *shape), dtype=np.float32)
    x = x.astype(args.dtype)
    times = []
    for _ in range(args.rounds * 4):
        t0 = time.perf_counter()
        session.run(["scores"], {"image": x})
        times.append(1000 * (time.perf_counter() - t0))
    return round(statistics.median(times[2:]), 3)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--model", choices=["vgg16", "tiny"], default="vgg16")
    parser.add_argument("--fp16", action="store_true", help="the float16 export")
    parser.add_argument("--shapes", type=int, default=8, help="photo sizes in turn")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--q", type=int, default=256)
    args = parser.parse_args()
    args.dtype = "float16" if args.fp16 else "float32"
    spec = (VGG16 if args.model == "vgg16" else TINY_D).with_dtype(args.dtype)
    store = ensure_store(ROOT / "bench" / ".cache", [spec])
    entry = store.read(spec.name, verify=False)
    model_bytes = entry.onnx_path.read_bytes()
    shapes = []
    for width, height in STREAM_SIZES:
        w, h = rescaled_size(width, height, args.q)
        if (h, w) not in shapes:
            shapes.append((h, w))
    shapes = shapes[: args.shapes]
    result = {
        "device": args.device, "model": spec.name, "dtype": args.dtype, "q": args.q,
        "shapes": shapes, "rounds": args.rounds,
        "same_shape_ms": same_shape(model_bytes, shapes[0], args), "variants": {},
    }  # fmt: skip
    reference = None
    # The service's candidate second, so that a run stopped at its budget has measured it.
    variants = ("one_session", "per_shape_shared", "pool4", "per_shape_copies",
                "per_shape_shared_whole")  # fmt: skip
    for kind in variants:
        try:
            figures = run_variant(kind, model_bytes, shapes, args)
        except Exception as err:  # a variant the runtime refuses keeps its error
            result["variants"][kind] = {"error": f"{type(err).__name__}: {err}"}
            continue
        outputs = figures.pop("outputs")
        if reference is None:
            reference = outputs
        figures["max_abs_diff"] = float(
            max(np.max(np.abs(outputs[i] - reference[i])) for i in reference)
        )
        result["variants"][kind] = figures
        print(kind, figures, flush=True)
        # After each variant: a run stopped at its budget keeps what it measured.
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
