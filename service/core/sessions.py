"""The onnxruntime environment the engines run in: session options and providers, CUDA's
libraries and its presence, and the process-wide CPU run slots (a model's sessions are a
``service.core.session_pool.SessionPool``, which may share one copy of the weights:
``service.core.shared_weights``).

Kept apart from ``Engine`` (one model's calls) because it is about the process and the device:
the benchmarks open their bare sessions with the very same ``session_setup``.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import threading

import onnxruntime as ort

from model_store import StoreEntry
from model_store.cpu import int8_note

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


class EngineError(Exception):
    """The ONNX file could not be loaded as the manifest describes it, or not on the device."""


@functools.cache
def cpu_run_slots(parallel_runs: int) -> threading.BoundedSemaphore:
    """The process-wide slots of network calls on the CPU provider, one set per number allowed.

    onnxruntime spreads one call over every core (its intra-op threads, spinning while they wait
    for work). Two calls at once, from two requests or two models, then share the cores and
    spin against each other: on 2 cores two concurrent VGG-16 calls took 17 to 24% longer each
    than the same calls one after the other (docs/serving.md, "Settings"). With one slot, a
    request's decoding and rescaling still overlap another's network call."""
    if parallel_runs < 1:
        raise ValueError(f"parallel_runs must be at least 1, not {parallel_runs}")
    return threading.BoundedSemaphore(parallel_runs)


def cuda_usable() -> bool:
    """Whether onnxruntime has its CUDA provider and a CUDA driver is installed. Checked before
    trying CUDA in ``auto`` mode, because a failed attempt logs errors from onnxruntime itself."""
    if CUDA not in ort.get_available_providers():
        return False
    names = ("nvcuda.dll",) if os.name == "nt" else ("libcuda.so.1", "libcuda.so")
    for name in names:
        try:
            ctypes.CDLL(name)
        except OSError:
            continue
        return True
    return False


def model_int8_note(
    dtype: str, provider: str, metrics: dict[str, object] | None = None
) -> str | None:
    """The ``int8_note`` of a served model in ``/models`` and its start-up log line: None for a
    float model, or an int8 model on a CPU with VNNI. ``metrics``, the manifest's
    ``provenance.metrics``, says whether it was exported with ``reduce_range``
    (``int8_reduce_range``): on a CPU without VNNI such a model gets a note about speed only,
    one without it a note about overflow and accuracy too (``model_store.cpu.int8_note``)."""
    if dtype != "int8":
        return None
    if provider != CPU:
        return f"int8 on {provider} is not measured; it is served as onnxruntime runs it"
    recorded = (metrics or {}).get("int8_reduce_range")
    return _this_cpu_int8_note(recorded if isinstance(recorded, bool) else None)


@functools.cache
def _this_cpu_int8_note(reduce_range: bool | None) -> str | None:
    return int8_note(reduce_range=reduce_range)


@functools.cache
def _preload_cuda_libraries() -> None:
    """onnxruntime-gpu finds pip-installed CUDA and cuDNN libraries only once they are loaded;
    torch would do it, but serving imports no torch."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return
    try:
        preload()
    except Exception as err:
        log.debug("onnxruntime.preload_dlls failed: %s", err)


def prefers_nhwc(cuda_layout: str, dtype: str) -> bool:
    """Whether CUDA convolutions run channels-last: ``auto`` says so for float16 models, whose
    channels-first convolutions get cuDNN algorithms 100 to 1000 times slower at some input shapes
    on an H100 (docs/gpu.md, "What the GPU figures say"), and not for float32 ones, which are
    faster channels-first."""
    return cuda_layout == "nhwc" or (cuda_layout == "auto" and dtype == "float16")


Providers = list[str | tuple[str, dict[str, str]]]


def session_setup(
    device: str,
    *,
    cuda_mem_limit: int | None = None,
    intra_op_threads: int = 0,
    cudnn_conv_algo_search: str = "heuristic",
    prefer_nhwc: bool = False,
    cpu_mem_arena: bool = True,
) -> tuple[ort.SessionOptions, Providers]:
    """The session options and provider list the engine opens every model with (the benchmarks'
    bare sessions use the same). ``device`` "auto" asks for CUDA only where ``cuda_usable``."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = intra_op_threads
    options.enable_cpu_mem_arena = cpu_mem_arena
    want_cuda = device == "cuda" or (device == "auto" and cuda_usable())
    if not want_cuda:
        return options, [CPU]
    _preload_cuda_libraries()
    cuda_options = {
        "cudnn_conv_algo_search": cudnn_conv_algo_search.upper(),
        "arena_extend_strategy": "kSameAsRequested",
    }
    if cuda_mem_limit:
        cuda_options["gpu_mem_limit"] = str(cuda_mem_limit)
    if prefer_nhwc:
        cuda_options["prefer_nhwc"] = "1"
    return options, [(CUDA, cuda_options), CPU]


def open_session(
    entry: StoreEntry,
    model_bytes: bytes,
    device: str,
    options: ort.SessionOptions,
    providers: Providers,
) -> ort.InferenceSession:
    want_cuda = providers[0] != CPU
    try:
        session = ort.InferenceSession(model_bytes, options, providers=providers)
    except Exception as err:
        raise EngineError(f"onnxruntime cannot load {entry.onnx_path.name}: {err}") from None
    running = session.get_providers()[0]
    if device == "cuda" and running != CUDA:
        raise EngineError(
            "VERYDEEP_DEVICE=cuda but onnxruntime's CUDA provider did not load (no GPU, or CUDA "
            f"or cuDNN libraries missing); the session would run on {running}"
        )
    if want_cuda and running != CUDA:
        log.warning("%s: CUDA provider did not load; running on %s", entry.name, running)
    release_model_bytes(session)
    return session


def release_model_bytes(session: ort.InferenceSession) -> None:
    """Let go of the model bytes that onnxruntime's Python session keeps for its whole life
    (upstream's own TODO: "holding the memory indefinitely"): 1,076 MiB of resident memory for
    VGG-16 + VGG-19, beside the weights the session holds anyway.

    It keeps them to rebuild the session on another provider: from ``set_providers``, never
    called here, and from ``run`` when a CUDA call fails, falling back to the CPU. That fallback
    goes too: a failed call must be an ``InferenceFailed``, not a model silently moved to the CPU
    while ``provider`` still says CUDA."""
    session.disable_fallback()
    if getattr(session, "_model_bytes", None) is not None:
        session._model_bytes = None
