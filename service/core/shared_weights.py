"""Sessions of one model sharing one copy of its weights on the device, opening a weightless
skeleton of the graph (docs/gpu.md, "Sessions sharing one copy of the weights"): what lets
``SessionPool`` keep a session for every input shape in flight on a GPU."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import onnxruntime as ort

from service.core.sessions import CUDA, EngineError, Providers

if TYPE_CHECKING:
    from onnx import TensorProto  # the serving path imports onnx only to share weights

log = logging.getLogger(__name__)


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

    onnxruntime keeps a pointer to that memory, not a copy, so the file stays while sessions
    that need it may still be opened (``SessionPool`` opens one per new input shape); where the
    sessions read nothing, ``release_file`` drops it and keeps the placeholder, and ``release``
    drops both once no session will open any more. The values must outlive every session that
    uses them: the engine keeps this object as long as its sessions. Reading the initializers
    needs the ``onnx`` package (the ``cuda`` extra), imported here only: serving without shared
    weights does not need it.
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
                    if self._file is None:  # released: there is nothing else to read
                        raise
                    log.info("opening without the weights failed (%s): given the file", err)
                    options = new_options()
                    self.add_to(options, file=True)
                    with_file.append(options)
                    self.reads_weights = True
            return open_graph(self.skeleton, with_file[0])

        return open_one

    def release_file(self) -> None:
        """Let go of the model file, keeping the placeholder: sessions that read nothing may
        still be opened (``SessionPool`` opens one per new input shape)."""
        self._file = None

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
