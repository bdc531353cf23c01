"""Boxes of the localisation net (paper Appendix A; docs/localization.md, "The box encoding").

A box in pixels is ``(x0, y0, x1, y1)``, x1 and y1 exclusive. The net regresses a box relative to
the 224 window it sees: ``(cx, cy, w, h)``, the centre and the size divided by the window side,
the centre measured from the window's top-left corner. A target cut by its crop is the part of
the box inside the crop; the same numbers decode a prediction of any map cell, whose window sits
at ``(32 j, 32 i)`` of the rescaled image (docs/serving.md, "Class score maps").

Training (torch) and serving (numpy) share these functions, so a box means the same on both
sides. Every function takes and returns float arrays with the 4 numbers on the last axis.
"""

from __future__ import annotations

import numpy as np

from model_store.scales import CROP_SIZE

STRIDE = 32
"""The fully-convolutional net's output stride: map cell (i, j) sees pixels from (32 j, 32 i)."""


def encode(box: np.ndarray, origin: np.ndarray, window: int = CROP_SIZE) -> np.ndarray:
    """``(cx, cy, w, h)`` of ``box (..., 4)`` in the window whose top-left corner is at
    ``origin (..., 2)`` (x, y), all in the same pixels."""
    box = np.asarray(box, dtype=np.float64)
    origin = np.asarray(origin, dtype=np.float64)
    centre = (box[..., 0:2] + box[..., 2:4]) / 2 - origin
    size = box[..., 2:4] - box[..., 0:2]
    return np.concatenate([centre, size], axis=-1) / window


def decode(params: np.ndarray, origin: np.ndarray, window: int = CROP_SIZE) -> np.ndarray:
    """The inverse of :func:`encode`: ``(x0, y0, x1, y1)`` of ``params (..., 4)``. A negative
    width or height (an untrained net may say so) decodes to an empty box at the centre."""
    params = np.asarray(params, dtype=np.float64) * window
    centre = params[..., 0:2] + np.asarray(origin, dtype=np.float64)
    half = np.maximum(params[..., 2:4], 0) / 2
    return np.concatenate([centre - half, centre + half], axis=-1)


def cell_origins(height: int, width: int) -> np.ndarray:
    """``(height, width, 2)``: the (x, y) of each map cell's window in the rescaled image."""
    ys, xs = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    return np.stack([xs, ys], axis=-1).astype(np.float64) * STRIDE


def clip(box: np.ndarray, width: float, height: float) -> np.ndarray:
    """``box`` limited to the ``width x height`` image ``[0, width) x [0, height)``."""
    box = np.asarray(box, dtype=np.float64)
    low = np.array([0.0, 0.0, 0.0, 0.0])
    high = np.array([width, height, width, height], dtype=np.float64)
    return np.clip(box, low, high)


def mirror(box: np.ndarray, width: float) -> np.ndarray:
    """``box`` of a horizontally flipped ``width``-wide image, in the unflipped image."""
    box = np.asarray(box, dtype=np.float64)
    return np.stack([width - box[..., 2], box[..., 1], width - box[..., 0], box[..., 3]], axis=-1)


def area(box: np.ndarray) -> np.ndarray:
    box = np.asarray(box, dtype=np.float64)
    return np.maximum(box[..., 2] - box[..., 0], 0) * np.maximum(box[..., 3] - box[..., 1], 0)


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of ``a (..., 4)`` and ``b (..., 4)``, broadcast; 0 where both
    are empty."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    low = np.maximum(a[..., 0:2], b[..., 0:2])
    high = np.minimum(a[..., 2:4], b[..., 2:4])
    inter = np.prod(np.maximum(high - low, 0), axis=-1)
    union = area(a) + area(b) - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def pairwise_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(len(a), len(b))`` IoU of every box of ``a (n, 4)`` with every box of ``b (m, 4)``."""
    return iou(np.asarray(a)[:, None, :], np.asarray(b)[None, :, :])
