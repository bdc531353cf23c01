"""One onnxruntime session per store entry, on CUDA when asked for and when it actually loads."""

from __future__ import annotations

import ctypes
import functools
import logging
import os
from typing import Literal

import numpy as np
import onnxruntime as ort

from model_store import Manifest, StoreEntry

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


class EngineError(Exception):
    """The ONNX file could not be loaded as the manifest describes it, or not on the device."""


class Engine:
    """A loaded model: ``scores(batch)`` runs the fully-convolutional net (thread-safe).

    ``provider`` is the execution provider that runs the graph, read back from the session, so a
    silent fallback from CUDA to CPU is never reported as CUDA.
    """

    def __init__(
        self,
        entry: StoreEntry,
        *,
        device: Literal["auto", "cuda", "cpu"] = "auto",
        cuda_mem_limit: int | None = None,
        intra_op_threads: int = 0,
    ) -> None:
        self.entry = entry
        self._manifest = entry.manifest
        onnx = entry.manifest.onnx
        self._input = onnx.input
        self._output = onnx.output
        self._dtype = np.dtype(onnx.dtype)
        self._session = _open_session(entry, device, cuda_mem_limit, intra_op_threads)
        self.provider = self._session.get_providers()[0]
        inputs = [i.name for i in self._session.get_inputs()]
        outputs = [o.name for o in self._session.get_outputs()]
        if inputs != [self._input] or self._output not in outputs:
            raise EngineError(
                f"{entry.onnx_path.name} has inputs {inputs} and outputs {outputs}; the manifest "
                f"says input {self._input!r} and output {self._output!r}"
            )

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def manifest(self) -> Manifest:
        return self._manifest

    def scores(self, batch: np.ndarray) -> np.ndarray:
        """Class score maps ``(N, K, h, w)`` as float32 for a float32 batch ``(N, 3, H, W)``."""
        feed = {self._input: batch.astype(self._dtype, copy=False)}
        (out,) = self._session.run([self._output], feed)
        return out.astype(np.float32, copy=False)

    def warm_up(self, scales: list[int]) -> None:
        """Run a dense flip pair at each scale and one multi-crop batch, so that the first request
        does not pay for memory arenas and kernel selection."""
        for q in scales:
            self.scores(np.zeros((2, 3, q, q), dtype=np.float32))
        self.scores(np.zeros((50, 3, 224, 224), dtype=np.float32))


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


def _open_session(
    entry: StoreEntry, device: str, cuda_mem_limit: int | None, intra_op_threads: int
) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = intra_op_threads
    want_cuda = device == "cuda" or (device == "auto" and cuda_usable())
    providers: list[str | tuple[str, dict[str, str]]] = [CPU]
    if want_cuda:
        _preload_cuda_libraries()
        cuda_options = {
            "cudnn_conv_algo_search": "HEURISTIC",
            "arena_extend_strategy": "kSameAsRequested",
        }
        if cuda_mem_limit:
            cuda_options["gpu_mem_limit"] = str(cuda_mem_limit)
        providers = [(CUDA, cuda_options), CPU]
    try:
        session = ort.InferenceSession(str(entry.onnx_path), options, providers=providers)
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
    return session
