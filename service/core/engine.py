"""One onnxruntime session per store entry, on CUDA when asked for and when it actually loads."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal

import numpy as np
import onnxruntime as ort

from model_store import EntryError, Manifest, StoreEntry
from service.core.errors import InferenceFailed
from service.core.protocol import Cancelled

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


class EngineError(Exception):
    """The ONNX file could not be loaded as the manifest describes it, or not on the device."""


@dataclass(frozen=True)
class FileIdentity:
    """What ``os.stat`` says about a file: enough to notice that it was replaced or rewritten."""

    size: int
    mtime_ns: int
    inode: int
    device: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileIdentity:
        return cls(st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)


class Engine:
    """A loaded model: ``scores(batch)`` runs the fully-convolutional net (thread-safe).

    ``provider`` is the execution provider that runs the graph, read back from the session, so a
    silent fallback from CUDA to CPU is never reported as CUDA.

    On CUDA the engine holds ``cuda_sessions`` sessions of the model and gives each input shape
    its own (see ``SessionPool``), and pads the last chunk of a batch split into ``max_batch``
    calls to ``max_batch`` views, so that multi-crop's calls all have one shape.

    On the CPU at most ``cpu_parallel_runs`` network calls run at once, over every CPU engine of
    the process (see ``cpu_run_slots``): each call already spreads over every core.

    The ONNX file is read once; with ``verify`` the sha256 of exactly the bytes that onnxruntime
    gets is checked against the manifest, so a file swapped between a check and the load cannot
    be served. The sessions live in memory: the file is never read again, and ``file_identity``
    records what it was, for ``changed_on_disk``.
    """

    def __init__(
        self,
        entry: StoreEntry,
        *,
        device: Literal["auto", "cuda", "cpu"] = "auto",
        cuda_mem_limit: int | None = None,
        intra_op_threads: int = 0,
        max_batch: int = 10,
        cuda_sessions: int = 1,
        cudnn_conv_algo_search: str = "heuristic",
        cuda_layout: str = "auto",
        cpu_parallel_runs: int = 1,
        cpu_mem_arena: bool = True,
        verify: bool = False,
    ) -> None:
        self.entry = entry
        self._manifest = entry.manifest
        onnx = entry.manifest.onnx
        self._input = onnx.input
        self._output = onnx.output
        self._dtype = np.dtype(onnx.dtype)
        self.max_batch = max_batch
        model_bytes, self.file_identity = _read_model(entry, verify)
        setup = session_setup(
            device,
            cuda_mem_limit=cuda_mem_limit,
            intra_op_threads=intra_op_threads,
            cudnn_conv_algo_search=cudnn_conv_algo_search,
            prefer_nhwc=prefers_nhwc(cuda_layout, onnx.dtype),
            cpu_mem_arena=cpu_mem_arena,
        )
        open_session = functools.partial(_open_session, entry, model_bytes, device, *setup)
        first = open_session()
        self.provider = first.get_providers()[0]
        extra = cuda_sessions - 1 if self.provider == CUDA else 0
        self._sessions = SessionPool([first, *(open_session() for _ in range(extra))])
        del model_bytes
        self._pad_chunks = self.provider == CUDA
        self._run_slots = cpu_run_slots(cpu_parallel_runs) if self.provider == CPU else None
        inputs = [i.name for i in first.get_inputs()]
        outputs = [o.name for o in first.get_outputs()]
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

    @property
    def sessions(self) -> int:
        """How many onnxruntime sessions of the model are loaded."""
        return len(self._sessions)

    def scores(self, batch: np.ndarray, cancel: threading.Event | None = None) -> np.ndarray:
        """Class score maps ``(N, K, h, w)`` as float32 for a float32 batch ``(N, 3, H, W)``, run
        in calls of at most ``max_batch`` images. Raises InferenceFailed when onnxruntime fails
        (its message is logged, not passed on), and ``Cancelled`` when ``cancel`` is set before
        a call starts (checked once it has its CPU run slot, which it may have waited for)."""
        if len(batch) <= self.max_batch:
            return self._run(batch, cancel)
        step = self.max_batch
        return np.concatenate(
            [self._chunk(batch[i : i + step], cancel) for i in range(0, len(batch), step)]
        )

    def _chunk(self, chunk: np.ndarray, cancel: threading.Event | None) -> np.ndarray:
        short = self.max_batch - len(chunk)
        if not self._pad_chunks or short == 0:
            return self._run(chunk, cancel)
        padding = np.zeros((short, *chunk.shape[1:]), dtype=chunk.dtype)
        return self._run(np.concatenate([chunk, padding]), cancel)[: len(chunk)]

    def _run(self, batch: np.ndarray, cancel: threading.Event | None) -> np.ndarray:
        feed = {self._input: batch.astype(self._dtype, copy=False)}
        session = self._sessions.for_shape(batch.shape)
        with self._run_slots or contextlib.nullcontext():
            if cancel is not None and cancel.is_set():
                raise Cancelled("classification cancelled")
            try:
                (out,) = session.run([self._output], feed)
            except Exception as err:
                log.error(
                    "%s: onnxruntime failed on a batch of shape %s: %s", self.name, batch.shape, err
                )
                raise InferenceFailed(self.name) from err
        return out.astype(np.float32, copy=False)

    def changed_on_disk(self) -> str | None:
        """None while the ONNX file is the one that was loaded (by size, mtime, inode), else what
        changed. The answers do not change with it: the session was built from verified bytes."""
        try:
            now = FileIdentity.of(os.stat(self.entry.onnx_path))
        except OSError as err:
            return f"{self.entry.onnx_path.name} is no longer readable ({err.strerror})"
        if now == self.file_identity:
            return None
        if (now.inode, now.device) != (self.file_identity.inode, self.file_identity.device):
            return f"{self.entry.onnx_path.name} was replaced by another file"
        return f"{self.entry.onnx_path.name} was modified"

    def warm_up(self, scales: list[int]) -> None:
        """Run a dense flip pair at each scale and one call of multi-crop crops, so that the first
        request does not pay for memory arenas and kernel selection."""
        for q in scales:
            self.scores(np.zeros((2, 3, q, q), dtype=np.float32))
        self.scores(np.zeros((self.max_batch, 3, 224, 224), dtype=np.float32))


class SessionPool:
    """Sessions of one model, each kept for the input shapes it ran last.

    onnxruntime's CUDA Conv keeps the cuDNN algorithm of the last input shape only: every change
    of shape chooses again, which costs a VGG tens of milliseconds in float32 and up to a second
    in float16 on an H100 (README, "GPU"), more than the network itself. A dense request at three
    scales changes shape three times. With a session per shape (up to the pool's size, least
    recently used first), a stream of same-sized photos never changes a session's shape.
    """

    def __init__(self, sessions: list[ort.InferenceSession]) -> None:
        self._sessions = sessions
        self._by_shape: OrderedDict[tuple[int, ...], int] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._sessions)

    def for_shape(self, shape: tuple[int, ...]) -> ort.InferenceSession:
        if len(self._sessions) == 1:
            return self._sessions[0]
        with self._lock:
            index = self._by_shape.get(shape)
            if index is None:
                if len(self._by_shape) < len(self._sessions):
                    index = len(self._by_shape)
                else:
                    _, index = self._by_shape.popitem(last=False)
                self._by_shape[shape] = index
            else:
                self._by_shape.move_to_end(shape)
            return self._sessions[index]


@functools.cache
def cpu_run_slots(parallel_runs: int) -> threading.BoundedSemaphore:
    """The process-wide slots of network calls on the CPU provider, one set per number allowed.

    onnxruntime spreads one call over every core (its intra-op threads, spinning while they wait
    for work). Two calls at once, from two requests or two models, then share the cores and
    spin against each other: on 2 cores two concurrent VGG-16 calls took 17 to 24% longer each
    than the same calls one after the other (README, "Benchmarks"). With one slot, a request's
    decoding and rescaling still overlap another's network call."""
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


def _read_model(entry: StoreEntry, verify: bool) -> tuple[bytes, FileIdentity]:
    path = entry.onnx_path
    try:
        with open(path, "rb") as f:
            identity = FileIdentity.of(os.fstat(f.fileno()))
            data = f.read()
    except OSError as err:
        raise EntryError(entry.name, f"cannot read {path}: {err.strerror}") from None
    if verify:
        actual = hashlib.sha256(data).hexdigest()
        expected = entry.manifest.onnx.sha256
        if actual != expected:
            raise EntryError(
                entry.name,
                f"sha256 mismatch for {entry.manifest.onnx.file}: manifest says {expected}, "
                f"file has {actual}",
            )
    return data, identity


def prefers_nhwc(cuda_layout: str, dtype: str) -> bool:
    """Whether CUDA convolutions run channels-last: ``auto`` says so for float16 models, whose
    channels-first convolutions get cuDNN algorithms 100 to 1000 times slower at some input shapes
    on an H100 (README, "GPU"), and not for float32 ones, which are faster channels-first."""
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


def _open_session(
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
