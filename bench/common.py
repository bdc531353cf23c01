"""Helpers the benchmarks share: the bare onnxruntime session the service's own would be, and
the preprocessed input the service computes for a request."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import numpy as np
import onnxruntime as ort

from model_store import StoreEntry

SETTLE_S = 0.1
"""Pause between timed calls: onnxruntime's idle pool threads spin after a run (VGG-16 on the
2-core machine: 42 to 46 ms of CPU before they park); the pause keeps one measurement's spinning
out of the next (and out of the other process)."""


def service_settings(overrides: dict[str, str] | None = None):  # -> service.settings.Settings
    """The settings a server subprocess reads from this environment plus ``overrides`` (the
    ``VERYDEEP_*`` variables it is given)."""
    from unittest import mock

    from service.settings import Settings

    with mock.patch.dict(os.environ, overrides or {}):
        return Settings()


def bare_session(entry: StoreEntry, settings, device: str = "cpu") -> ort.InferenceSession:
    """An onnxruntime session with the options and providers the service's engine sets under
    ``settings`` (a ``service.settings.Settings``) on ``device``."""
    from service.core.sessions import prefers_nhwc, session_setup

    options, providers = session_setup(
        device,
        cuda_mem_limit=settings.cuda_mem_limit,
        intra_op_threads=settings.intra_op_threads,
        cudnn_conv_algo_search=settings.cudnn_conv_algo_search,
        prefer_nhwc=prefers_nhwc(settings.cuda_layout, entry.manifest.onnx.dtype),
        cpu_mem_arena=settings.cpu_mem_arena,
    )
    session = ort.InferenceSession(str(entry.onnx_path), options, providers=providers)
    if device == "cuda" and session.get_providers()[0] != "CUDAExecutionProvider":
        raise RuntimeError("onnxruntime's CUDA provider did not load")
    return session


def preprocessed(data: bytes, entry: StoreEntry, q: int) -> np.ndarray:
    """The ``(3, H, W)`` input the service computes for ``data`` at scale ``q``, in the dtype the
    model takes (float32, or float16 for a ``--fp16`` export; float32 for an int8 graph)."""
    from model_store.imaging import decode, rescale, to_input

    decoded = decode(data, max_scale=q)
    onnx = entry.manifest.onnx
    return to_input(rescale(decoded.image, q), entry.manifest.preprocessing, onnx.input_dtype)


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def interleaved(
    calls: dict[str, Callable[[], object]], reps: int, warmup: int
) -> dict[str, list[float]]:
    """Time each call ``reps`` times, alternating between them (A B A B ...) after ``warmup``
    untimed rounds, so that drift in the machine's speed hits every call alike."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for round_ in range(warmup + reps):
        for name, fn in calls.items():
            elapsed = timed(fn)
            if round_ >= warmup:
                times[name].append(elapsed)
            time.sleep(SETTLE_S)
    return times
