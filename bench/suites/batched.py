"""Batched views (GPU suite): views per second of the service's ``Engine`` when one network call
takes B views of 224 x 224 (multi-crop runs its 25 or 50 crops of a scale in calls of
``VERYDEEP_MAX_BATCH``), against one view per call.

Changes of input shape: dense flip pairs of photos of several sizes in turn, against the same
size every time, with as many sessions as the service keeps per model (``VERYDEEP_CUDA_SESSIONS``)
and with one; onnxruntime's CUDA Conv chooses its cuDNN algorithms again at every change of shape
of a session.

And what onnxruntime IO binding would save: the service's call (numpy in, numpy out, so each call
copies its input to the GPU and the scores back) against the same call with input and output
bound on the GPU beforehand."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnxruntime as ort

from bench.common import interleaved
from bench.context import Context
from bench.models import CROP
from bench.report import Figure
from bench.stats import median, ratio, summary

NAME = "batched"
BATCHES = (1, 2, 4, 8, 10, 16, 32, 64)
QUICK_BATCHES = (1, 4, 10, 32)
IO_BATCH = 10
"""The service's default ``max_batch``: the size of multi-crop's calls."""


def run(ctx: Context) -> tuple[list[Figure], dict]:
    from service.core.engine import Engine, EngineOptions

    entry = ctx.model_entry()
    batches = QUICK_BATCHES if ctx.mode.quick else BATCHES
    options = EngineOptions(device=ctx.device, max_batch=max(batches), cuda_sessions=len(batches))
    engine = Engine(entry, options)
    rng = np.random.default_rng(0)
    inputs = {
        b: rng.standard_normal((b, 3, CROP, CROP), dtype=np.float32).astype(ctx.dtype)
        for b in batches
    }
    times = interleaved(
        {str(b): (lambda x=x, e=engine: e.scores(x)) for b, x in inputs.items()},
        reps=ctx.mode.reps,
        warmup=ctx.mode.warmup,
    )
    views_per_s = {b: b / median(times[str(b)]) for b in batches}
    one = views_per_s[batches[0]]
    figures = [
        Figure(
            benchmark=NAME,
            label=f"views/s, {b} crops of {CROP}x{CROP} per call ({ctx.dtype})",
            value=views_per_s[b],
            unit="views/s",
            peer_label="1 view per call",
            peer=one,
            ratio=ratio(views_per_s[b], one),
            ratio_label="batched/single",
        )
        for b in batches[1:]
    ]
    provider = engine.provider
    del engine  # its sessions' GPU memory
    shape_figures, shape_details = shape_changes(ctx, entry)
    figures += shape_figures
    io_figure, io_details = io_binding(ctx, entry, inputs.get(IO_BATCH))
    figures += io_figure
    details = {
        "device": ctx.device,
        "dtype": ctx.dtype,
        "provider": provider,
        "views_per_s": {str(b): v for b, v in views_per_s.items()},
        "times_s": {k: summary(v) for k, v in times.items()},
        "shape_changes": shape_details,
        "io_binding": io_details,
    }
    return figures, details


SHAPE_WIDTHS = (320, 341, 384, 427, 455)
"""Widths of the 256-pixel-high flip pairs sent in turn: 5:4, 4:3, 3:2, 5:3 and 16:9 photos at
Q = 256, one more than the service's default four sessions per model."""


SHAPE_REPS = 3


def shape_changes(ctx: Context, entry) -> tuple[list[Figure], dict]:
    from service.core.engine import Engine

    if not ctx.cuda:
        return [], {}
    rng = np.random.default_rng(1)
    pairs = [
        rng.standard_normal((2, 3, 256, w), dtype=np.float32).astype(ctx.dtype)
        for w in SHAPE_WIDTHS
    ]
    options = ctx.engine_options()
    figures, details = [], {}
    for sessions in sorted({1, options.cuda_sessions}):
        engine = Engine(entry, replace(options, cuda_sessions=sessions))
        for count in sorted({sessions, len(pairs)}):
            if count == 1:
                continue
            rotation = pairs[:count]
            calls = {
                "same": lambda engine=engine: engine.scores(pairs[1]),
                "rotating": lambda engine=engine, rotation=rotation: [
                    engine.scores(x) for x in rotation
                ],
            }
            # Few repetitions: in float16 a rotation of five sizes can take seconds.
            times = interleaved(calls, reps=SHAPE_REPS, warmup=1)
            per_call = median(times["rotating"]) / count
            same = median(times["same"])
            figures.append(
                Figure(
                    benchmark=NAME,
                    label=f"{count} photo sizes in turn, {sessions} session(s) per model "
                    f"({ctx.dtype})",
                    value=per_call * 1e3,
                    unit="ms/pair",
                    peer_label="one size every time",
                    peer=same * 1e3,
                    ratio=ratio(per_call, same),
                    ratio_label="in turn/same",
                )
            )
            details[f"{sessions} sessions, {count} sizes"] = {
                "rotating_s": summary(times["rotating"]),
                "same_s": summary(times["same"]),
            }
        del engine
    return figures, details


def io_binding(ctx: Context, entry, x: np.ndarray | None) -> tuple[list[Figure], dict]:
    """The service's ``session.run`` on numpy against ``run_with_iobinding`` with the input
    already on the GPU and the output left there (CUDA only)."""
    from bench.common import bare_session

    if not ctx.cuda or x is None:
        return [], {}
    session = bare_session(entry, ctx.settings(), ctx.device)
    name_in, name_out = entry.manifest.onnx.input, entry.manifest.onnx.output
    binding = session.io_binding()
    binding.bind_ortvalue_input(name_in, ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0))
    binding.bind_output(name_out, "cuda", 0)
    times = interleaved(
        {
            "numpy": lambda: session.run([name_out], {name_in: x}),
            "bound": lambda: session.run_with_iobinding(binding),
        },
        reps=ctx.mode.reps,
        warmup=ctx.mode.warmup,
    )
    numpy_s, bound_s = median(times["numpy"]), median(times["bound"])
    figure = Figure(
        benchmark=NAME,
        label=f"session.run, {len(x)} crops, numpy in and out (the service)",
        value=numpy_s * 1e3,
        unit="ms",
        peer_label="IO binding, input and output on the GPU",
        peer=bound_s * 1e3,
        ratio=ratio(numpy_s, bound_s),
        ratio_label="numpy/bound",
        note=f"copies {100 * (numpy_s - bound_s) / numpy_s:+.1f}% of the call",
    )
    details = {
        "batch": len(x),
        "input_bytes": int(x.nbytes),
        "numpy_s": summary(times["numpy"]),
        "bound_s": summary(times["bound"]),
    }
    return [figure], details
