"""OverFeat's greedy merging of box predictions (Sermanet et al., 2014; paper Appendix A;
docs/localization.md, "Serving"), with intersection over union as the closeness measure.

Every box starts as a cluster of its own, its weight the classifier's evidence for it. While some
pair of clusters has IoU >= ``threshold`` (``MERGE_IOU``, 0.5), the pair with the highest IoU is
merged: the merged cluster's box is the weighted mean of its voters' boxes (of the two clusters'
boxes, weighted by their weights, which is the same) and its weight their sum. Equal IoUs are
taken in a fixed order (the lower cluster index first), so a result depends on nothing but the
boxes, the weights and their order. IoUs are kept in float32: a pair within 3e-8 of the
threshold may fall on either side of it.

The IoU of every pair is computed once, in blocks of rows (``model_store.boxes.pairwise_iou``),
into an ``n x n`` float32 matrix; each row keeps its best partner. A merge then costs one row of
IoUs (the merged box against the live ones) and a new best partner for the rows that pointed at
either of the two: no pair is computed twice. Memory is ``4 n^2`` bytes (64 MiB at 4,096 boxes),
which is why ``/localize`` bounds ``n`` (``VERYDEEP_MAX_LOCALIZE_BOXES``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model_store import boxes as box_ops

MERGE_IOU = 0.5
"""Two clusters merge while their IoU is at least this (the ILSVRC criterion of a hit)."""
_BLOCK_VALUES = 1 << 20
"""Pairs per block of the initial IoU computation (its float64 temporaries: tens of MiB)."""
_DEAD = np.float32(-1.0)


@dataclass(frozen=True)
class Merged:
    """The clusters left when no pair is close enough: boxes ``(m, 4)``, weights ``(m,)`` (the
    sums of their voters' weights), and how many input boxes voted for each."""

    boxes: np.ndarray
    weights: np.ndarray
    voters: np.ndarray

    def best(self) -> int:
        """The index of the cluster of largest weight (the first of equals)."""
        return int(np.argmax(self.weights))


def merge_boxes(boxes: np.ndarray, weights: np.ndarray, threshold: float = MERGE_IOU) -> Merged:
    """Greedy merging of ``boxes (n, 4)`` (x0, y0, x1, y1) with ``weights (n,)`` >= 0."""
    coords = np.array(boxes, dtype=np.float64).reshape(-1, 4)
    weight = np.array(weights, dtype=np.float64).reshape(-1)
    n = len(coords)
    if len(weight) != n:
        raise ValueError(f"{n} boxes but {len(weight)} weights")
    if n == 0:
        raise ValueError("no boxes to merge")
    if np.any(weight < 0) or not np.all(np.isfinite(weight)):
        raise ValueError("weights must be finite and >= 0")
    voters = np.ones(n, dtype=np.int64)
    alive = np.ones(n, dtype=bool)
    if n > 1:
        _merge(coords, weight, voters, alive, np.float32(threshold))
    return Merged(coords[alive], weight[alive], voters[alive])


def _merge(
    coords: np.ndarray,
    weight: np.ndarray,
    voters: np.ndarray,
    alive: np.ndarray,
    threshold: np.float32,
) -> None:
    n = len(coords)
    closeness = _iou_matrix(coords)
    partner = np.argmax(closeness, axis=1)
    best = closeness[np.arange(n), partner]
    while True:
        i = int(np.argmax(best))
        if not best[i] >= threshold:
            return
        j = int(partner[i])
        i, j = min(i, j), max(i, j)  # the merged cluster keeps the lower index
        total = weight[i] + weight[j]
        if total > 0:
            coords[i] = (weight[i] * coords[i] + weight[j] * coords[j]) / total
        else:  # voters without evidence: their plain mean
            coords[i] = (voters[i] * coords[i] + voters[j] * coords[j]) / (voters[i] + voters[j])
        weight[i], voters[i] = total, voters[i] + voters[j]
        alive[j] = False
        closeness[j, :] = _DEAD
        closeness[:, j] = _DEAD
        best[j] = _DEAD
        live = np.flatnonzero(alive)
        row = np.full(n, _DEAD, dtype=np.float32)
        row[live] = box_ops.iou(coords[i], coords[live])
        row[i] = _DEAD
        closeness[i, :] = row
        closeness[:, i] = row
        # Rows whose best partner was one of the two look again; every other row only has to
        # compare its best with the merged box.
        stale = np.flatnonzero(alive & ((partner == i) | (partner == j)))
        stale = np.union1d(stale, [i])
        partner[stale] = np.argmax(closeness[stale], axis=1)
        best[stale] = closeness[stale, partner[stale]]
        better = row > best
        better[i] = False
        partner[better] = i
        best[better] = row[better]


def _iou_matrix(coords: np.ndarray) -> np.ndarray:
    """``(n, n)`` float32 IoU of every pair, -1 on the diagonal (no box is its own partner)."""
    n = len(coords)
    out = np.empty((n, n), dtype=np.float32)
    step = max(1, _BLOCK_VALUES // n)
    for start in range(0, n, step):  # the upper triangle, copied to the lower (IoU is symmetric)
        stop = min(start + step, n)
        block = box_ops.pairwise_iou(coords[start:stop], coords[start:])
        out[start:stop, start:] = block
        out[start:, start:stop] = block.T
    np.fill_diagonal(out, _DEAD)
    return out


@dataclass(frozen=True)
class ClassBox:
    """A class's box: the merged box of largest weight, and ``score``, its weight divided by the
    class's total weight (the share of the class's evidence that voted for it)."""

    box: np.ndarray
    score: float
    voters: int
    clusters: int


def class_box(boxes: np.ndarray, weights: np.ndarray, threshold: float = MERGE_IOU) -> ClassBox:
    """The box of one class from all its predictions and their weights (``merge_boxes``)."""
    merged = merge_boxes(boxes, weights, threshold)
    k = merged.best()
    total = float(np.sum(merged.weights))
    if total > 0:
        score = float(merged.weights[k]) / total
    else:  # no evidence at all: the share of the voters
        score = float(merged.voters[k]) / float(np.sum(merged.voters))
    return ClassBox(merged.boxes[k], score, int(merged.voters[k]), len(merged.weights))
