"""1. Serving overhead: ``/classify`` latency for one dense view (flip=false, one scale) of a
640x480 JPEG against a bare onnxruntime ``session.run`` on the same preprocessed input. Decoding,
rescaling, normalising, HTTP and JSON are the overhead; the response's ``timing_ms`` splits it."""

from __future__ import annotations

import httpx

from bench.common import bare_session, interleaved, preprocessed
from bench.context import REQUEST_IMAGE, Context, post_image
from bench.models import spec_macs
from bench.report import Figure, Target
from bench.stats import median, ratio, summary

NAME = "overhead"
Q = 256
TARGET = Target("<", 1.10)


def run(ctx: Context) -> tuple[list[Figure], dict]:
    entry = ctx.model_entry()
    data = ctx.request_jpeg()
    x = preprocessed(data, entry, Q)[None]
    session = bare_session(entry, ctx.settings(), ctx.device)
    output = entry.manifest.onnx.output
    feed = {entry.manifest.onnx.input: x}
    params = {
        "model": entry.name,
        "scales": str(Q),
        "flip": "false",
        "method": "dense",
        "top_k": "5",
    }
    url = ctx.classify_url()
    server_timing: list[dict[str, float]] = []

    with httpx.Client(timeout=120.0) as client:

        def api() -> None:
            server_timing.append(post_image(client, url, data, params).json()["timing_ms"])

        times = interleaved(
            {"api": api, "bare": lambda: session.run([output], feed)},
            reps=ctx.mode.reps,
            warmup=ctx.mode.warmup,
        )
    server_timing = server_timing[ctx.mode.warmup :]
    api_s, bare_s = median(times["api"]), median(times["bare"])
    breakdown = _breakdown(server_timing, api_s, bare_s)
    ctx.shared["dense_bare_s"] = {
        "q": Q,
        "shape": list(x.shape),
        "median_s": bare_s,
        "macs": spec_macs(ctx.model, x.shape[2], x.shape[3]),
    }
    overhead = ratio(api_s, bare_s)
    figure = Figure(
        benchmark=NAME,
        label=f"/classify 1 dense view, Q={Q}, {REQUEST_IMAGE[0]}x{REQUEST_IMAGE[1]} JPEG",
        value=api_s * 1e3,
        unit="ms",
        peer_label="bare session.run",
        peer=bare_s * 1e3,
        ratio=overhead,
        ratio_label="api/bare",
        target=TARGET,
        note=f"overhead {100 * (overhead - 1):+.1f}%",
        details=breakdown,
    )
    details = {
        "model": entry.name,
        "input_shape": list(x.shape),
        "jpeg_bytes": len(data),
        "api_s": summary(times["api"]),
        "bare_s": summary(times["bare"]),
        "server_timing_ms": server_timing,
        "breakdown": breakdown,
        "session_options": {
            "intra_op_num_threads": session.get_session_options().intra_op_num_threads
        },
    }
    return [figure], details


def _breakdown(server_timing: list[dict[str, float]], api_s: float, bare_s: float) -> dict:
    """Where a request's time went, from the server's medians of ``timing_ms``: decoding, the
    rest of inference beyond the bare call, and outside the server's total."""
    inference_ms = median([t["inference"] for t in server_timing])
    total_ms = median([t["total"] for t in server_timing])
    return {
        "decode_ms": median([t["decode"] for t in server_timing]),
        "rescale_normalize_network_softmax_ms": inference_ms,
        "server_total_ms": total_ms,
        "inference_minus_bare_ms": inference_ms - bare_s * 1e3,
        "http_json_upload_ms (client minus server total)": api_s * 1e3 - total_ms,
    }
