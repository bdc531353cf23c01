"""4. Efficiency against the machine's limit: effective GFLOP/s of dense evaluation (multiply-adds
x 2 / time, the bare onnxruntime session on the preprocessed photo) against the fp32 matmul peak
measured in the same run, interleaved with it: an onnxruntime MatMul (MLAS sgemm) with the
service's thread setting, and numpy's matmul (its BLAS, default threads, one per core); the
faster one's best run is the peak. Dense GFLOP/s is from the median run.

On CUDA, in the export's dtype: the MatMul runs on the CUDA provider with its operands and result
bound on the GPU (onnxruntime IO binding, so that no copy is timed), and torch's matmul on the GPU
replaces numpy's; dense is the bare session as the service runs it, numpy in and out."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnxruntime as ort

from bench.common import bare_session, interleaved, preprocessed
from bench.context import Context
from bench.models import spec_macs
from bench.report import Figure, Target
from bench.stats import median, summary

NAME = "efficiency"
TARGET = Target(">=", 0.60)


CUDA_GEMM_SIZE = 8192
"""Matmul size on a GPU: large enough to reach its tensor-core peak (1.1 TFLOP a call)."""


def matmul_session(
    n: int, intra_op_threads: int, device: str = "cpu", dtype: str = "float32"
) -> ort.InferenceSession:
    """An onnxruntime graph with one ``MatMul`` of two ``n x n`` inputs of ``dtype``, with the
    service's session options and providers for ``device``."""
    import onnx
    from onnx import TensorProto, helper

    from service.core.sessions import session_setup

    elem = TensorProto.FLOAT16 if dtype == "float16" else TensorProto.FLOAT
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])],
        "sgemm",
        [helper.make_tensor_value_info(k, elem, [n, n]) for k in ("a", "b")],
        [helper.make_tensor_value_info("c", elem, [n, n])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = min(model.ir_version, 9)
    onnx.checker.check_model(model)
    options, providers = session_setup(device, intra_op_threads=intra_op_threads)
    return ort.InferenceSession(model.SerializeToString(), options, providers=providers)


def gemm_calls(ctx: Context, n: int, threads: int) -> dict[str, Callable[[], object]]:
    """The two matmul peers, ready to time: onnxruntime's MatMul and numpy's (torch's on CUDA)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32).astype(ctx.dtype)
    b = rng.standard_normal((n, n), dtype=np.float32).astype(ctx.dtype)
    gemm = matmul_session(n, threads, ctx.device, ctx.dtype)
    if not ctx.cuda:
        return {
            "ort_sgemm": lambda: gemm.run(["c"], {"a": a, "b": b}),
            "numpy_sgemm": lambda: a @ b,
        }
    import torch

    binding = gemm.io_binding()
    for name, value in (("a", a), ("b", b)):
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(value, "cuda", 0))
    binding.bind_output("c", "cuda", 0)
    ta, tb = (torch.from_numpy(v).cuda() for v in (a, b))

    def torch_gemm() -> None:
        torch.matmul(ta, tb)
        torch.cuda.synchronize()

    return {"ort_sgemm": lambda: gemm.run_with_iobinding(binding), "torch_sgemm": torch_gemm}


def run(ctx: Context) -> tuple[list[Figure], dict]:
    entry = ctx.model_entry()
    threads = ctx.settings().intra_op_threads
    n = CUDA_GEMM_SIZE if ctx.cuda else ctx.mode.gemm_size
    gemms = gemm_calls(ctx, n, threads)
    session = bare_session(entry, ctx.settings(), ctx.device)
    out_name, in_name = entry.manifest.onnx.output, entry.manifest.onnx.input
    scales = (256,) if ctx.mode.quick else (256, 512)
    figures, per_scale = [], {}
    for q in scales:
        x = preprocessed(ctx.request_jpeg(), entry, q)[None]
        macs = spec_macs(ctx.model, x.shape[2], x.shape[3])
        times = interleaved(
            {"dense": lambda x=x: session.run([out_name], {in_name: x}), **gemms},
            reps=max(5, ctx.mode.reps // 2),
            warmup=ctx.mode.warmup,
        )
        flops = {"dense": 2 * macs, **{k: 2 * n**3 for k in gemms}}
        # dense: the typical (median) run; the matmuls: their best run, a peak being a maximum
        gflops = {
            k: flops[k] / (median(v) if k == "dense" else min(v)) / 1e9 for k, v in times.items()
        }
        gflops_median = {k: flops[k] / median(v) / 1e9 for k, v in times.items()}
        peak_name = max(gemms, key=lambda k: gflops[k])
        fraction = gflops["dense"] / gflops[peak_name]
        per_scale[q] = {
            "input_shape": list(x.shape),
            "macs": macs,
            "gflops": gflops,
            "gflops_median": gflops_median,
            "times_s": {k: summary(v) for k, v in times.items()},
            "peak": peak_name,
            "fraction": fraction,
        }
        figures.append(
            Figure(
                benchmark=NAME,
                label=f"dense GFLOP/s, 1 view {x.shape[2]}x{x.shape[3]} (Q={q})",
                value=gflops["dense"],
                unit="GFLOP/s",
                peer_label=f"{peak_name.replace('_', ' ')} {n}^3 peak"
                + (f" ({ctx.dtype})" if ctx.cuda else ""),
                peer=gflops[peak_name],
                ratio=fraction,
                ratio_label="dense/peak",
                target=TARGET,
                details={"gflops": gflops},
            )
        )
    details = {
        "device": ctx.device,
        "dtype": ctx.dtype,
        "gemm_n": n,
        "intra_op_threads_setting": threads,
        "scales": per_scale,
    }
    return figures, details
