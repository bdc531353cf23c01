"""Test scales Q as people write them: the one parser of ``scales=`` (the API), ``--scales``
(``verydeep evaluate``) and ``--test-scales`` (``verydeep export``).

A list is comma-separated ASCII digits, each Q in ``[CROP_SIZE, max_scale]``, no Q twice, at most
``max_count`` of them. Python's ``int`` would also take ``2_56``, ``+256`` or ``٢٥٦`` (Arabic-Indic
digits): those are refused, so that a value means the same thing wherever it is typed.
"""

from __future__ import annotations

import re

CROP_SIZE = 224
"""The smallest test scale: the side of the training crop, below which fc6 has no window."""

_DIGITS = re.compile(r"[0-9]{1,6}")


class ScalesError(ValueError):
    """A scales list that cannot be used; the message says why, quoting the input."""


def parse_scales(text: str, *, max_scale: int, max_count: int | None = None) -> list[int]:
    """``"256,384,512"`` to ``[256, 384, 512]`` (order kept); raises ``ScalesError``."""
    parts = [p.strip() for p in text.split(",")]
    if not all(_DIGITS.fullmatch(p) for p in parts):
        raise ScalesError(f"{quoted(text)} is not a comma-separated list of integers")
    values = [int(p) for p in parts]
    if max_count is not None and len(values) > max_count:
        raise ScalesError(f"{len(values)} scales; at most {max_count} per request")
    bad = [q for q in values if not CROP_SIZE <= q <= max_scale]
    if bad:
        raise ScalesError(f"{bad} out of range; each Q must be in [{CROP_SIZE}, {max_scale}]")
    if len(set(values)) != len(values):
        raise ScalesError(f"{quoted(text)} lists a scale twice")
    return values


def quoted(text: str, limit: int = 80) -> str:
    """``repr(text)`` cut to ``limit`` characters, to quote what a user typed in a message."""
    shown = repr(text)
    return shown if len(shown) <= limit else f"{shown[: limit - 5]}...{shown[-1]}"
