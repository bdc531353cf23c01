"""One model loaded for inference: ``Engine``, its options, and ``open_engine`` from a store."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from model_store import EntryError, Manifest, ModelStore, StoreEntry, sha256_bytes
from service.core import sessions
from service.core.batching import Batcher
from service.core.errors import InferenceFailed, UnsupportedModel
from service.core.preprocess_graph import PreprocessGraph
from service.core.session_pool import SessionPool
from service.core.sessions import CPU, CUDA, EngineError, cpu_run_slots
from service.core.shared_weights import SharedWeights, shared_weights_device

if TYPE_CHECKING:
    import onnxruntime as ort

log = logging.getLogger(__name__)

Device = Literal["auto", "cuda", "cpu"]
ConvAlgoSearch = Literal["heuristic", "exhaustive", "default"]
CudaLayout = Literal["auto", "nchw", "nhwc"]
Preprocess = Literal["pillow", "graph"]


@dataclass(frozen=True)
class EngineOptions:
    """How an engine runs its model; ``Settings.engine_options()`` gives the service's.

    ``device`` "auto" is CUDA where ``sessions.cuda_usable``; ``cuda_sessions`` and ``cuda_layout``
    matter on CUDA only, ``cpu_parallel_runs`` and ``cpu_mem_arena`` on the CPU only (their
    measured effects are in docs/serving.md, "Settings")."""

    device: Device = "auto"
    cuda_mem_limit: int | None = None
    intra_op_threads: int = 0
    max_batch: int = 10
    max_batch_pixels: int = 8 * 1024 * 1024
    batch_window_ms: float = 0.0
    cuda_sessions: int = 1
    cuda_shared_weights: bool = False
    cudnn_conv_algo_search: ConvAlgoSearch = "heuristic"
    cuda_layout: CudaLayout = "auto"
    cpu_parallel_runs: int = 1
    cpu_mem_arena: bool = True
    preprocess: Preprocess = "pillow"


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


def open_engine(store: ModelStore, name: str, options: EngineOptions) -> Engine:
    """The engine of store entry ``name``: the manifest is read and validated, the ONNX file read
    once, and its sha256 checked on exactly the bytes onnxruntime gets (by ``Engine``). The
    service's registry and the offline evaluator both open their models here. Raises
    ``StoreError`` (a broken entry) or ``EngineError`` (onnxruntime refuses it)."""
    return Engine(store.read(name, verify=False), options)


class Engine:
    """A loaded model: ``scores(batch)`` runs the fully-convolutional net (thread-safe).

    ``provider`` is the execution provider that runs the graph, read back from the session, so a
    silent fallback from CUDA to CPU is never reported as CUDA.

    On CUDA the engine holds ``cuda_sessions`` sessions of the model and gives each input shape
    its own (see ``SessionPool``); with ``cuda_shared_weights`` they all use one copy of the
    weights (see ``SharedWeights``) and open one per new input shape, up to ``cuda_sessions``.
    It pads every call that is not one request's whole batch (the chunks of a batch larger
    than ``max_batch``, and calls merged across requests) to ``padded_views``: a shape of view
    then comes in few batch sizes, each with its cuDNN plan, and the padding costs less than
    the views it pads.

    On the CPU at most ``cpu_parallel_runs`` network calls run at once, over every CPU engine of
    the process (see ``cpu_run_slots``): each call already spreads over every core.

    The ONNX file is read once and the sha256 of exactly the bytes that onnxruntime gets is
    checked against the manifest, so a file swapped between a check and the load cannot be
    served. The sessions live in memory: the file is never read again, and ``file_identity``
    records what it was, for ``changed_on_disk``.
    """

    def __init__(self, entry: StoreEntry, options: EngineOptions | None = None) -> None:
        options = options or EngineOptions()
        self.entry = entry
        self._manifest = entry.manifest
        onnx = entry.manifest.onnx
        self._input = onnx.input
        self._output = onnx.output
        self.features_output = onnx.features
        # An int8 graph is quantised inside; its input stays float32 (docs/serving.md, "int8
        # models").
        self._dtype = np.dtype(onnx.input_dtype)
        self.max_batch = options.max_batch
        self._max_pixels = options.max_batch_pixels
        model_bytes, self.file_identity = _read_verified(entry)
        setup = functools.partial(
            sessions.session_setup,
            options.device,
            cuda_mem_limit=options.cuda_mem_limit,
            intra_op_threads=options.intra_op_threads,
            cudnn_conv_algo_search=options.cudnn_conv_algo_search,
            prefer_nhwc=sessions.prefers_nhwc(options.cuda_layout, onnx.dtype),
            cpu_mem_arena=options.cpu_mem_arena,
        )
        self._sessions, self._weights = _open_pool(entry, model_bytes, options, setup)
        del model_bytes
        first = self._sessions.first
        self.provider = first.get_providers()[0]
        # Rescaling and normalising on the model's device (protocol.ScaledImages.get), where
        # asked: within a pixel level of Pillow's (docs/gpu.md, "Preprocessing on the GPU").
        self.preprocess = None
        if options.preprocess == "graph":  # options of its own: see SharedWeights.add_to
            graph_options, graph_providers = setup()
            self.preprocess = PreprocessGraph(graph_providers, graph_options)
        self._pad_chunks = self.provider == CUDA
        parallel = options.cpu_parallel_runs
        self._run_slots = cpu_run_slots(parallel) if self.provider == CPU else None
        self._calls = self._views = 0
        self._count_lock = threading.Lock()
        wanted = [self._output, *([self.features_output] if self.features_output else [])]
        self._batchers = {output: self._batcher(output, options) for output in wanted}
        inputs = [i.name for i in first.get_inputs()]
        outputs = [o.name for o in first.get_outputs()]
        if inputs != [self._input] or not set(wanted) <= set(outputs):
            raise EngineError(
                f"{entry.onnx_path.name} has inputs {inputs} and outputs {outputs}; the manifest "
                f"says input {self._input!r} and outputs {wanted}"
            )

    def _batcher(self, output: str, options: EngineOptions) -> Batcher:
        """The calls of one output (requests asking for scores do not share features' calls)."""
        return Batcher(
            functools.partial(self._run, output=output),
            max_views=options.max_batch,
            max_pixels=options.max_batch_pixels,
            window_s=options.batch_window_ms / 1000,
            slot=lambda: self._run_slots or contextlib.nullcontext(),
        )

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def manifest(self) -> Manifest:
        return self._manifest

    @functools.cached_property
    def int8_note(self) -> str | None:
        """What ``/models`` and the start-up log say of an int8 model on this device and CPU
        (``sessions.model_int8_note``, which reads how the entry was exported); None otherwise."""
        manifest = self._manifest
        return sessions.model_int8_note(
            manifest.onnx.dtype, self.provider, manifest.provenance.metrics
        )

    @property
    def sessions(self) -> int:
        """How many onnxruntime sessions of the model are open now."""
        return len(self._sessions)

    @property
    def session_limit(self) -> int:
        """The most sessions the model's pool holds (``SessionPool.size``): above ``sessions``
        where shared-weight sessions open one per new input shape."""
        return self._sessions.size

    @property
    def shape_changes(self) -> int:
        """Calls given a session that last ran another input shape, since the warm-up (on CUDA
        each makes cuDNN choose its algorithms again: ``SessionPool``)."""
        return self._sessions.shape_changes

    @property
    def shared_weights(self) -> bool:
        """Whether the sessions use one copy of the weights (``SharedWeights``)."""
        return self._weights is not None

    @property
    def shared_weights_read(self) -> bool:
        """Whether those sessions needed the file all the same (``SharedWeights.reads_weights``:
        a graph optimiser rewrote weights into each session)."""
        return self._weights is not None and self._weights.reads_weights

    def scores(self, batch: np.ndarray, cancel: threading.Event | None = None) -> np.ndarray:
        """Class score maps ``(N, K, h, w)`` as float32 for a float32 batch ``(N, 3, H, W)``
        (a localization entry's box maps ``(N, 4K or 4, h, w)``: its ``onnx.output``), run
        in calls of at most ``max_batch`` images, which may also hold other requests' views of
        the same shape (``Batcher``). Raises InferenceFailed when onnxruntime fails (its message
        is logged, not passed on), and ``Cancelled`` when ``cancel`` is set before a call starts
        (checked once the call has its CPU run slot, which it may have waited for)."""
        return self._in_calls(self._output, batch, cancel)

    def features(self, batch: np.ndarray, cancel: threading.Event | None = None) -> np.ndarray:
        """fc7's activation maps ``(N, F, h, w)`` (docs/serving.md, "Features"), run as
        ``scores`` is; raises UnsupportedModel for an entry exported without them."""
        self.check_features()
        assert self.features_output is not None
        return self._in_calls(self.features_output, batch, cancel)

    def check_features(self) -> None:
        """Raise UnsupportedModel (422) unless the ONNX file has the ``features`` output."""
        if self.features_output is None:
            raise UnsupportedModel(
                f"model {self.name!r} was exported before its ONNX file had the 'features' "
                "output: export it again (verydeep export or import-torchvision), or add the "
                "output with scripts/add_features_output.py"
            )

    def _in_calls(
        self, output: str, batch: np.ndarray, cancel: threading.Event | None
    ) -> np.ndarray:
        batcher, step = self._batchers[output], self.max_batch
        if len(batch) <= step:
            return batcher.scores(batch, cancel)
        chunks = (batch[i : i + step] for i in range(0, len(batch), step))
        return np.concatenate([batcher.scores(c, cancel, part=True) for c in chunks])

    @property
    def network_calls(self) -> int:
        """onnxruntime calls made so far (since the warm-up)."""
        return self._calls

    @property
    def network_views(self) -> int:
        """Views computed so far, each counted once (padding not counted)."""
        return self._views

    def _run(self, batch: np.ndarray, merged: bool, *, output: str) -> np.ndarray:
        n = len(batch)
        padded = n
        if self._pad_chunks and merged:
            padded = padded_views(n, self.max_batch, self._max_pixels // batch[0, 0].size)
        if padded > n:
            padding = np.zeros((padded - n, *batch.shape[1:]), dtype=batch.dtype)
            batch = np.concatenate([batch, padding])
        feed = {self._input: batch.astype(self._dtype, copy=False)}
        session = self._sessions.for_shape(batch.shape)
        try:
            (out,) = session.run([output], feed)
        except Exception as err:
            log.error(
                "%s: onnxruntime failed on a batch of shape %s: %s", self.name, batch.shape, err
            )
            raise InferenceFailed(self.name) from err
        with self._count_lock:
            self._calls += 1
            self._views += n
        return out[:n].astype(np.float32, copy=False)

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
        with self._count_lock:  # the counts are of requests' work
            self._calls = self._views = 0
        self._sessions.reset_counts()


def padded_views(views: int, max_batch: int, fit: int) -> int:
    """The views a padded call runs for ``views`` real ones: the next power of two, at most
    ``max_batch`` and at most the ``fit`` views of ``max_batch_pixels`` (never fewer than
    ``views``). Every shape of view then comes in at most five batch sizes up to 10, each a
    session and a cuDNN plan of its own, and padding never doubles a call's work: two merged
    flip pairs at Q=512 run 4 views, not the 10 of ``max_batch``."""
    return max(views, min(1 << (views - 1).bit_length(), max_batch, fit))


def _open_pool(
    entry: StoreEntry,
    model_bytes: bytes,
    options: EngineOptions,
    setup: Callable[[], tuple[ort.SessionOptions, sessions.Providers]],
) -> tuple[SessionPool, SharedWeights | None]:
    """The engine's sessions: one on the CPU, up to ``cuda_sessions`` on CUDA. Sessions with
    their own weights are all opened now (each costs a copy of the weights). Where
    ``_shared_weights`` gives one copy, they all use it and open its weightless skeleton, and the
    pool opens them as new input shapes come, up to ``cuda_sessions``: in milliseconds where
    they read nothing, else in about half a second from the file, which is then kept in memory
    for them (an optimiser that rewrites weights gives each session its own rewritten copy)."""
    session_options, providers = setup()
    weights = _shared_weights(model_bytes, options, providers)

    def open_graph(graph: bytes, opened_with: ort.SessionOptions) -> ort.InferenceSession:
        return sessions.open_session(entry, graph, options.device, opened_with, providers)

    if weights is None:
        open_session = functools.partial(open_graph, model_bytes, session_options)
    else:
        open_session = weights.opener(open_graph, lambda: setup()[0])
    first = open_session()
    size = options.cuda_sessions if first.get_providers()[0] == CUDA else 1
    if weights is None:
        return SessionPool([first, *(open_session() for _ in range(size - 1))]), None
    if not weights.reads_weights:
        weights.release_file()  # the placeholder stays, for the sessions still to open
    return SessionPool([first], size=size, open_more=open_session), weights


def _shared_weights(
    model_bytes: bytes, options: EngineOptions, providers: sessions.Providers
) -> SharedWeights | None:
    """The one copy of the weights that the engine's sessions share, where asked and where it
    helps: on CUDA, with more than one session. A copy that cannot be made on the GPU with
    ``device`` "auto" leaves each session its own (onnxruntime may still fall back to the CPU);
    with "cuda" it is an EngineError."""
    device = shared_weights_device(providers)
    if not options.cuda_shared_weights or options.cuda_sessions < 2 or device is None:
        return None
    try:
        return SharedWeights(model_bytes, device)
    except EngineError as err:
        if options.device != "auto":
            raise
        log.warning("sessions keep their own weights: %s", err)
        return None


def _read_verified(entry: StoreEntry) -> tuple[bytes, FileIdentity]:
    path = entry.onnx_path
    try:
        with open(path, "rb") as f:
            identity = FileIdentity.of(os.fstat(f.fileno()))
            data = f.read()
    except OSError as err:
        raise EntryError(entry.name, f"cannot read {path}: {err.strerror}") from None
    actual, expected = sha256_bytes(data), entry.manifest.onnx.sha256
    if actual != expected:
        raise EntryError(
            entry.name,
            f"sha256 mismatch for {entry.manifest.onnx.file}: manifest says {expected}, "
            f"file has {actual}",
        )
    return data, identity
