"""4. Efficiency against the machine's limit: effective GFLOP/s of dense evaluation (multiply-adds
x 2 / time, the bare onnxruntime session on the preprocessed photo) against the fp32 matmul peak
measured in the same run, interleaved with it: an onnxruntime MatMul (MLAS sgemm) with the
service's thread setting, and numpy's matmul (its BLAS, default threads, one per core); the
faster one's best run is the peak. Dense GFLOP/s is from the median run."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from bench.common import bare_session, interleaved, preprocessed
from bench.context import Context
from bench.models import spec_macs
from bench.report import Figure, Target
from bench.stats import median, summary

NAME = "efficiency"
TARGET = Target(">=", 0.60)


def matmul_session(n: int, intra_op_threads: int) -> ort.InferenceSession:
    """An onnxruntime graph with one ``MatMul`` of two ``n x n`` float32 inputs."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])],
        "sgemm",
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, [n, n]) for k in ("a", "b")],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = min(model.ir_version, 9)
    onnx.checker.check_model(model)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = intra_op_threads
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def run(ctx: Context) -> tuple[list[Figure], dict]:
    entry = ctx.model_entry()
    threads = ctx.settings().intra_op_threads
    n = ctx.mode.gemm_size
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    gemm = matmul_session(n, threads)
    session = bare_session(entry, threads)
    out_name, in_name = entry.manifest.onnx.output, entry.manifest.onnx.input
    scales = (256,) if ctx.mode.quick else (256, 512)
    figures, per_scale = [], {}
    for q in scales:
        x = preprocessed(ctx.request_jpeg(), entry, q)[None]
        macs = spec_macs(ctx.model, x.shape[2], x.shape[3])
        times = interleaved(
            {
                "dense": lambda x=x: session.run([out_name], {in_name: x}),
                "ort_sgemm": lambda: gemm.run(["c"], {"a": a, "b": b}),
                "numpy_sgemm": lambda: a @ b,
            },
            reps=max(5, ctx.mode.reps // 2),
            warmup=ctx.mode.warmup,
        )
        flops = {"dense": 2 * macs, "ort_sgemm": 2 * n**3, "numpy_sgemm": 2 * n**3}
        # dense: the typical (median) run; the matmuls: their best run, a peak being a maximum
        gflops = {
            k: flops[k] / (median(v) if k == "dense" else min(v)) / 1e9 for k, v in times.items()
        }
        gflops_median = {k: flops[k] / median(v) / 1e9 for k, v in times.items()}
        peak_name = max(("ort_sgemm", "numpy_sgemm"), key=lambda k: gflops[k])
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
                peer_label=f"{peak_name.replace('_', ' ')} {n}^3 peak",
                peer=gflops[peak_name],
                ratio=fraction,
                ratio_label="dense/peak",
                target=TARGET,
                details={"gflops": gflops},
            )
        )
    details = {
        "gemm_n": n,
        "intra_op_threads_setting": threads,
        "scales": per_scale,
    }
    return figures, details
