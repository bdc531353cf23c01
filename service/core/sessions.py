"""The onnxruntime environment the engines run in: session options and providers, CUDA's
libraries and its presence, the process-wide CPU run slots, and a pool of sessions per model.

Kept apart from ``Engine`` (one model's calls) because it is about the process and the device:
the benchmarks open their bare sessions with the very same ``session_setup``.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import onnxruntime as ort

from model_store import StoreEntry
from model_store.cpu import int8_note

if TYPE_CHECKING:
    from onnx import TensorProto  # the serving path imports onnx only to share weights

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


class EngineError(Exception):
    """The ONNX file could not be loaded as the manifest describes it, or not on the device."""


class SessionPool:
    """Sessions of one model, each kept for the input shapes it ran last.

    onnxruntime's CUDA Conv keeps the cuDNN algorithm of the last input shape only: every change
    of shape chooses again, which costs a VGG tens of milliseconds in float32 and up to a second
    in float16 on an H100 (docs/gpu.md, "What the GPU figures say"), more than the network itself.
    A dense request at three scales changes shape three times. With a session per shape (up to
    the pool's size, least recently used first), a stream of same-sized photos never changes a
    session's shape.
    """

    def __init__(self, sessions: list[ort.InferenceSession]) -> None:
        self._sessions = sessions
        self._by_shape: OrderedDict[tuple[int, ...], int] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._sessions)

    @property
    def first(self) -> ort.InferenceSession:
        """One of the sessions (they are alike): for the provider and the graph's names."""
        return self._sessions[0]

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


class SharedWeights:
    """One copy of a model's weights on its device, which every session of the model uses in
    place, and the weightless graph (``skeleton``) that those sessions open.

    Each onnxruntime session deserialises the ONNX file's initializers into memory of its own
    (553 MB a session for VGG-16 in float32), which is what limits ``SessionPool`` to a few
    sessions on a GPU. ``SessionOptions.add_initializer`` hands sessions an ``OrtValue`` by
    name instead: onnxruntime then uses that value and never deserialises the file's
    initializer of the same name, in place when the value lives on the device the session
    plans it on, so a session costs its activations only and the pool can keep a session for
    every shape in flight (docs/gpu.md, "Sessions sharing one copy of the weights").

    Parsing the whole file would still cost each session most of its start-up, so the sessions
    open ``skeleton``: the same graph with every large initializer's bytes replaced by an
    external-data reference to where those bytes lie in the file. ``opener`` opens them two
    ways (docs/gpu.md, "The skeleton"):

    - the references resolve to an empty placeholder file, so that nothing is read (a VGG-16
      session opened in 2 to 7 ms on the CPU), and a session whose optimiser would read a
      weight from the graph fails to open instead of reading anything else;
    - from the first such failure on, the file itself, the very bytes whose sha256 was checked,
      is handed over from memory (``add_external_initializers_from_files_in_memory``): a graph
      optimisation that rewrites weights (the CPU provider's NCHWc layout; presumably CUDA's
      channels-last layout of float16 models) reads them there, at the price of onnxruntime
      copying every referenced initializer into the session while it opens (0.6 s for
      VGG-16), and writes its result into each session.

    onnxruntime keeps a pointer to that memory, not a copy, so ``release`` drops the file and
    the placeholder once the sessions are open, and no session may be opened after it. The
    values must outlive every session that uses them: the engine keeps this object as long as
    its sessions. Reading the initializers needs the ``onnx`` package (the ``cuda`` extra),
    imported here only: serving without shared weights does not need it.
    """

    FILE_NAME = "model.onnx"  # the file the skeleton's weights refer to
    INLINE_BYTES = 1024  # smaller initializers stay in the skeleton: nothing to gain
    FOLDER_KEY = "session.model_external_initializers_file_folder_path"

    def __init__(self, model_bytes: bytes, device: str) -> None:
        try:
            import onnx
            from onnx import numpy_helper
        except ImportError:
            raise EngineError(
                "VERYDEEP_CUDA_SHARED_WEIGHTS needs the onnx package to read the weights: "
                "pip install 'verydeep[cuda]' (or onnx), or leave the setting off"
            ) from None
        model = onnx.load_from_string(model_bytes)
        self.values: dict[str, ort.OrtValue] = {}
        self.nbytes = 0
        start = 0
        try:
            for tensor in model.graph.initializer:
                array = numpy_helper.to_array(tensor)  # its own shape, scalars 0-d
                if not array.flags.c_contiguous:
                    array = array.copy(order="C")
                self.values[tensor.name] = ort.OrtValue.ortvalue_from_numpy(array, device, 0)
                self.nbytes += array.nbytes
                del array  # one host copy at a time
                if len(tensor.raw_data) >= self.INLINE_BYTES:
                    start = _refer_to_file(tensor, model_bytes, start, self.FILE_NAME)
        except Exception as err:
            raise EngineError(f"cannot place the weights on {device}: {err}") from None
        self.skeleton = model.SerializeToString()
        self.reads_weights = False  # whether the sessions needed the file (set by opener)
        self._file: bytes | None = model_bytes
        self._placeholder: tempfile.TemporaryDirectory[str] | None = None

    def add_to(self, options: ort.SessionOptions, *, file: bool) -> None:
        """Give the sessions opened with ``options`` these values for their initializers, and
        the skeleton's references the placeholder, or with ``file`` the file from memory
        (until ``release``)."""
        if self._file is None:
            raise RuntimeError("the weights were released: open the sessions before release")
        for name, value in self.values.items():
            options.add_initializer(name, value)
        if file:
            options.add_external_initializers_from_files_in_memory(
                [self.FILE_NAME], [self._file], [len(self._file)]
            )
            return
        if self._placeholder is None:
            self._placeholder = tempfile.TemporaryDirectory(prefix="verydeep-weights-")
            Path(self._placeholder.name, self.FILE_NAME).touch()
        options.add_session_config_entry(self.FOLDER_KEY, self._placeholder.name)

    def opener(
        self,
        open_graph: Callable[[bytes, ort.SessionOptions], ort.InferenceSession],
        new_options: Callable[[], ort.SessionOptions],
    ) -> Callable[[], ort.InferenceSession]:
        """A function that opens one more session of ``skeleton`` (``open_graph(graph,
        options)``, options from ``new_options``): reading nothing while the sessions need no
        weight of the graph, and from the first that fails to open so, with the file."""
        fast = new_options()
        fast.log_severity_level = 4  # its expected failure is no error: the file path follows
        self.add_to(fast, file=False)
        with_file: list[ort.SessionOptions] = []

        def open_one() -> ort.InferenceSession:
            if not with_file:
                try:
                    return open_graph(self.skeleton, fast)
                except EngineError as err:
                    log.info("the sessions read weights from the graph; given the file: %s", err)
                    with_file.append(new_options())
                    self.add_to(with_file[0], file=True)
                    self.reads_weights = True
            return open_graph(self.skeleton, with_file[0])

        return open_one

    def release(self) -> None:
        """Let go of the model file and the placeholder once every session is open
        (onnxruntime copied what it needed while opening each)."""
        self._file = None
        if self._placeholder is not None:
            self._placeholder.cleanup()
            self._placeholder = None


def _refer_to_file(tensor: TensorProto, model_bytes: bytes, start: int, name: str) -> int:
    """Replace ``tensor``'s raw bytes by a reference to where the same bytes lie in
    ``model_bytes``; return where the next search starts. Protobuf writes the initializers in
    order, so each is found after the last; any place holding the same bytes would do."""
    raw = tensor.raw_data
    offset = model_bytes.find(raw, start)
    if offset < 0:
        offset = model_bytes.find(raw)
    if offset < 0:  # cannot happen for bytes read from model_bytes; never refer blindly
        raise ValueError(f"initializer {tensor.name} not found in the file")
    tensor.ClearField("raw_data")
    tensor.data_location = tensor.EXTERNAL
    for key, value in (("location", name), ("offset", offset), ("length", len(raw))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, str(value)
    return offset + len(raw)


def shared_weights_device(providers: Providers) -> str | None:
    """Where ``SharedWeights`` go for sessions opened with ``providers``: "cuda" when CUDA
    leads the list; None on the CPU, where one session serves every shape (no choice of
    algorithm per shape) and the NCHWc layout would copy the weights into each session anyway."""
    first = providers[0]
    return "cuda" if (first[0] if isinstance(first, tuple) else first) == CUDA else None


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
