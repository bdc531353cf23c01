"""The one way the command line draws progress (docs/training.md, "Progress"). No torch.

On a terminal a tqdm bar redraws at most once a second. Anywhere else (a log file, CI, a pipe)
carriage-return redraws would pile up, so the bar writes plain lines instead: one when it
starts, then at most one every ``QUIET_INTERVAL`` seconds, and one when it ends.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import IO, Any

TTY_INTERVAL = 1.0  # seconds between redraws on a terminal
QUIET_INTERVAL = 30.0  # seconds between lines where the stream is not a terminal


def progress_bar(
    iterable: Iterable[Any] | None = None,
    *,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    enabled: bool = True,
    file: IO[str] | None = None,
    **kwargs: Any,
) -> Any:
    """A ``tqdm`` bar on ``file`` (default stderr), quiet and periodic off a terminal.

    Use it as tqdm: iterate over it, or ``update()`` and ``close()`` it. ``enabled=False`` draws
    nothing. Postfix changes (``set_postfix(..., refresh=False)``) show at the next redraw."""
    from tqdm import tqdm

    stream = file if file is not None else sys.stderr
    tty = is_terminal(stream)
    if not tty:
        kwargs["leave"] = True  # a log keeps the last line of every bar
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        disable=not enabled,
        file=stream if tty else _Lines(stream),
        mininterval=TTY_INTERVAL if tty else QUIET_INTERVAL,
        dynamic_ncols=tty,
        **kwargs,
    )


def is_terminal(stream: Any) -> bool:
    """True when ``stream`` is an interactive terminal (a closed or odd stream is not)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


class _Lines:
    """A stream for tqdm that turns each carriage-return redraw into one line of its own."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream

    def write(self, text: str) -> None:
        line = text.replace("\r", "").rstrip()
        if line:
            self._stream.write(line + "\n")

    def flush(self) -> None:
        self._stream.flush()
