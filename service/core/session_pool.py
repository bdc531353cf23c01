"""``SessionPool``: the sessions of one model, a session per input shape (docs/gpu.md, "What the
GPU figures say")."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import onnxruntime as ort

log = logging.getLogger(__name__)

Shape = tuple[int, ...]


class SessionPool:
    """Sessions of one model, each kept for the input shape it ran last.

    onnxruntime's CUDA Conv keeps the cuDNN algorithm of the last input shape only: every change
    of shape chooses again, which costs a VGG tens of milliseconds in float32 and up to a second
    in float16 on an H100 (docs/gpu.md, "What the GPU figures say"), more than the network itself.
    A dense request at three scales changes shape three times. The pool gives each shape a
    session of its own, the least recently used shape's when every session is taken, so that a
    stream of photos of as many shapes as sessions never changes a session's shape.

    With ``open_more`` (a function that opens one more session) the pool starts with the
    sessions given and opens another for each new shape until it holds ``size``: what sessions
    sharing one copy of the weights allow (``SharedWeights``: a session then costs its
    activations and opens in milliseconds), so that memory grows with the shapes a stream has,
    not with the limit. A session that fails to open (the GPU's memory full) stops the growing;
    the shape then takes the least recently used session, as in a full pool.

    Invariants: a shape has at most one session, and a session at most one shape; a call never
    waits for another shape's session to open, only for its own; ``shape_changes`` counts the
    shapes given a session that last ran another shape (on CUDA, each makes cuDNN choose again).
    """

    def __init__(
        self,
        sessions: list[ort.InferenceSession],
        *,
        size: int | None = None,
        open_more: Callable[[], ort.InferenceSession] | None = None,
    ) -> None:
        if not sessions:
            raise ValueError("a pool starts with at least one session")
        self._slots = [_Slot.holding(s) for s in sessions]
        self._size = max(size or 0, len(sessions)) if open_more else len(sessions)
        self._open_more = open_more
        self._by_shape: OrderedDict[Shape, _Slot] = OrderedDict()
        self._lock = threading.Lock()
        self.shape_changes = 0

    def __len__(self) -> int:
        """The sessions open (or opening) now."""
        return len(self._slots)

    @property
    def size(self) -> int:
        """The most sessions the pool holds."""
        return self._size

    @property
    def first(self) -> ort.InferenceSession:
        """One of the sessions (they are alike): for the provider and the graph's names."""
        session = self._slots[0].session
        assert session is not None  # the first slots hold sessions given, never opening
        return session

    def for_shape(self, shape: Shape) -> ort.InferenceSession:
        """The session for input ``shape``, opened now if it is new and the pool may grow."""
        while True:
            slot, opening = self._assign(shape)
            if opening:
                self._open(slot)
            session = slot.wait()
            if session is not None:
                return session
            # Its opening failed, and the pool stopped growing: take a session that exists.

    def reset_counts(self) -> None:
        with self._lock:
            self.shape_changes = 0

    def _assign(self, shape: Shape) -> tuple[_Slot, bool]:
        with self._lock:
            slot = self._by_shape.get(shape)
            if slot is not None:
                self._by_shape.move_to_end(shape)
                return slot, False
            opening = False
            if len(self._by_shape) < len(self._slots):  # a session that no shape has
                taken = {id(s) for s in self._by_shape.values()}
                slot = next(s for s in self._slots if id(s) not in taken)
            elif len(self._slots) < self._size:
                slot = _Slot()
                self._slots.append(slot)
                opening = True
            else:
                _, slot = self._by_shape.popitem(last=False)
            if slot.last_shape is not None and slot.last_shape != shape:
                self.shape_changes += 1
            slot.last_shape = shape
            self._by_shape[shape] = slot
            return slot, opening

    def _open(self, slot: _Slot) -> None:
        assert self._open_more is not None
        try:
            slot.ready(self._open_more())
        except Exception as err:
            with self._lock:
                self._slots.remove(slot)
                for shape in [s for s, held in self._by_shape.items() if held is slot]:
                    del self._by_shape[shape]
                self._size = len(self._slots)
            log.warning(
                "could not open another session (%s): the pool stays at %d sessions, shapes "
                "beyond share them",
                err,
                self._size,
            )
            slot.ready(None)


class _Slot:
    """A session of the pool, or one being opened (``wait`` returns it, or None if that failed)."""

    def __init__(self) -> None:
        self.session: ort.InferenceSession | None = None
        self.last_shape: Shape | None = None
        self._opened = threading.Event()

    @classmethod
    def holding(cls, session: ort.InferenceSession) -> _Slot:
        slot = cls()
        slot.ready(session)
        return slot

    def ready(self, session: ort.InferenceSession | None) -> None:
        self.session = session
        self._opened.set()

    def wait(self) -> ort.InferenceSession | None:
        self._opened.wait()
        return self.session
