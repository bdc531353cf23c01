"""2. Engine against torch eager: the service's single dense view (its onnxruntime ``Engine``)
against the same fully-convolutional net run by torch in eager mode, same input, same number of
threads, same weights (the cached export is rebuilt from its seed and the outputs compared).

On CUDA both run on the GPU in the export's dtype, numpy in and numpy out (torch's time includes
its copies to and from the GPU, as the engine's does); the 1.3x target is the CPU's."""

from __future__ import annotations

import numpy as np

from bench.common import interleaved, preprocessed
from bench.context import Context, ort_threads
from bench.models import build_torch
from bench.report import Figure, Target
from bench.stats import median, ratio, summary

NAME = "engine"
Q = 256
TARGET = Target(">=", 1.3)


def run(ctx: Context) -> tuple[list[Figure], dict]:
    import torch

    from service.core.engine import Engine
    from training.fully_conv import to_fully_convolutional

    entry = ctx.model_entry()
    x = preprocessed(ctx.request_jpeg(), entry, Q)[None]
    settings_threads = ctx.settings().intra_op_threads
    threads = settings_threads or ort_threads()
    torch_threads_before = torch.get_num_threads()
    torch.set_num_threads(threads)
    engine = Engine(entry, ctx.engine_options())
    device = torch.device(ctx.device)
    dtype = getattr(torch, ctx.dtype)
    fcn = to_fully_convolutional(build_torch(ctx.model)).eval().to(device, dtype)

    def eager() -> np.ndarray:
        with torch.inference_mode():
            xt = torch.from_numpy(x).to(device, dtype)
            return fcn(xt).float().cpu().numpy()

    try:
        reference = eager()
        served = engine.scores(x)
        max_diff = float(np.max(np.abs(reference - served)))
        scale = float(np.max(np.abs(reference)))
        times = interleaved(
            {"engine": lambda: engine.scores(x), "torch": eager},
            reps=ctx.mode.reps,
            warmup=ctx.mode.warmup,
        )
    finally:
        torch.set_num_threads(torch_threads_before)
    engine_s, torch_s = median(times["engine"]), median(times["torch"])
    speedup = ratio(torch_s, engine_s)
    figure = Figure(
        benchmark=NAME,
        label=f"service Engine, 1 dense view, input {x.shape[2]}x{x.shape[3]}",
        value=engine_s * 1e3,
        unit="ms",
        peer_label=f"torch eager (CUDA, {ctx.dtype})"
        if ctx.cuda
        else f"torch eager ({threads} threads)",
        peer=torch_s * 1e3,
        ratio=speedup,
        ratio_label="torch/engine",
        target=None if ctx.cuda else TARGET,
        details={"max_abs_diff": max_diff, "max_abs_score": scale},
    )
    details = {
        "input_shape": list(x.shape),
        "threads": threads,
        "onnxruntime_intra_op_threads_setting": settings_threads,
        "torch_num_threads": threads,
        "device": ctx.device,
        "dtype": ctx.dtype,
        "torch_version": torch.__version__,
        "torch_mkldnn": bool(torch.backends.mkldnn.is_available()),
        "engine_s": summary(times["engine"]),
        "torch_s": summary(times["torch"]),
        "same_net_max_abs_diff": max_diff,
        "same_net_max_abs_score": scale,
    }
    return [figure], details
