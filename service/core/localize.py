"""The paper's localisation procedure (Appendix A, the "fully-fledged" protocol of Table 9;
docs/localization.md, "Serving") on a decoded image, with no HTTP in sight.

A localisation net (a store entry of task ``localization``) regresses a box per map cell, per
class for per-class regression (PCR) or one for every class (SCR); a classification net (a model
or an ensemble: the classifier) rates them. For an image of ``W x H`` pixels, at each scale Q:

1. The image is rescaled (smallest side Q, ``model_store.imaging``) to ``W_Q x H_Q``; its views
   are the image and, with ``flip``, its mirror.
2. The classifier's dense protocol runs on the same views (``service.core.protocol``): a view's
   posterior is the softmax of its class score map averaged over space, and the classifier's
   posterior, the mean over views and scales (over members for an ensemble), ranks the classes:
   the ``top_k`` most probable are the predictions. Per view and cell, the softmax over classes
   of the cell's scores (averaged over members) is the classifier's posterior at that cell.
3. The localisation net runs on the same views: its box map has the classifier's score map's
   ``h x w`` for every VGG configuration (checked). Class c's box at cell (i, j) is
   ``boxes.decode(map[4c:4c+4, i, j])`` (PCR) or ``boxes.decode(map[0:4, i, j])`` (SCR), from the
   cell's window at ``(32 j, 32 i)`` (``boxes.cell_origins``); a mirrored view's box is mirrored
   back (``boxes.mirror`` with ``W_Q``), then scaled to the image's pixels (x times ``W / W_Q``,
   y times ``H / H_Q``) and clipped to it (``boxes.clip``).
4. Per predicted class, every box of every view and scale votes with the classifier's posterior
   of that class at its cell, and the votes are merged greedily (``service.core.merging``: the
   closest pair by IoU while it is >= 0.5, boxes averaged by weight, weights added). The class's
   box is the merged box of largest weight; its ``box_score``, that weight over the class's
   total: the share of the class's evidence that voted for the box.

With several localisation nets (as the paper's submission combined its nets at S = 256 and
S = 384), each runs at its scales (the asked ones, else its own ``test_scales``), the classifier
at every scale any of them runs at, and the union of their box sets is merged: in step 4 every
box of every net votes, each with the classifier's posterior at its own cell and scale.

The service (``/localize``) and the offline evaluator (``verydeep evaluate --task
localization``) both call ``localize``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from model_store import Manifest
from model_store import boxes as box_ops
from service.core import merging
from service.core.errors import UnsupportedModel
from service.core.protocol import (
    Cancelled,
    ScaledImages,
    ScoringModel,
    softmax,
    top_k,
    views_per_scale,
)


@dataclass(frozen=True)
class LocalizedClass:
    """One prediction: the class, its posterior, its box in the image's pixels and its score."""

    index: int
    probability: float
    box: tuple[float, float, float, float]
    box_score: float
    voters: int
    clusters: int


@dataclass(frozen=True)
class Localized:
    """What ``localize`` computed: the classifier's posterior, the predictions, the scales the
    classifier ran at with its views, each localisation net's scales, the boxes each class
    merged (cells x views over scales and nets) and the merging's seconds."""

    posterior: np.ndarray
    predictions: tuple[LocalizedClass, ...]
    scales: tuple[int, ...]
    views: int
    boxes_per_class: int
    merge_s: float
    members: tuple[str, ...] = field(default=())
    localizers: tuple[tuple[str, tuple[int, ...]], ...] = field(default=())


def cell_boxes(
    box_map: np.ndarray,
    cls: int,
    manifest: Manifest,
    rescaled: tuple[int, int],
    size: tuple[int, int],
    mirrored: bool,
    offset: tuple[int, int] = (0, 0),
) -> np.ndarray:
    """``(h * w, 4)``: class ``cls``'s box at every cell of one view's box map ``(C, h, w)``,
    row-major, in the pixels of the ``size`` (W, H) image whose view was ``rescaled`` (W_Q, H_Q)
    (and mirrored, when ``mirrored``); step 3 of the module's procedure. ``offset``: the (x, y)
    of the view in the rescaled image, for a crop of it (the central-crop protocol)."""
    assert manifest.localization is not None
    first = 4 * cls if manifest.localization.regression == "per-class" else 0
    channels = np.asarray(box_map[first : first + 4], dtype=np.float64)
    _, h, w = channels.shape
    origins = box_ops.cell_origins(h, w) + np.asarray(offset, dtype=np.float64)
    boxes = box_ops.decode(channels.transpose(1, 2, 0), origins)
    if mirrored:
        boxes = box_ops.mirror(boxes, rescaled[0])
    sx, sy = size[0] / rescaled[0], size[1] / rescaled[1]
    boxes = boxes * np.array([sx, sy, sx, sy])
    return box_ops.clip(boxes, size[0], size[1]).reshape(-1, 4)


def cell_posteriors(score_maps: np.ndarray) -> np.ndarray:
    """``(V, K, h, w)``: the softmax over classes of every cell of score maps ``(V, K, h, w)``."""
    return softmax(score_maps)


@dataclass
class _Views:
    """One localisation net's box maps of a scale's views, with the classifier's cell posteriors
    of those views beside them."""

    manifest: Manifest
    rescaled: tuple[int, int]
    box_maps: np.ndarray  # (V, C, h, w)
    weights: np.ndarray  # (V, K, h, w)


def net_scales(
    locnets: Sequence[ScoringModel], scales: Sequence[int] | None
) -> list[tuple[ScoringModel, list[int]]]:
    """Each localisation net with the scales it runs at: ``scales`` where given, else its own
    ``test_scales``."""
    return [(net, list(scales or net.manifest.test_scales)) for net in locnets]


def _cell_weights(
    classifiers: Sequence[ScoringModel],
    inputs: ScaledImages,
    q: int,
    flip: bool,
    dense: dict[str, list[np.ndarray]],
    cancel: threading.Event | None,
) -> np.ndarray:
    """The classifier's cell posteriors ``(V, K, h, w)`` of the views at ``q`` (the members'
    mean), its members' view posteriors appended to ``dense``."""
    weights = None
    for m in classifiers:
        score_maps = m.scores(_batch(inputs.get(q, m), flip), cancel)
        dense[m.name].append(softmax(score_maps.mean(axis=(2, 3), dtype=np.float64)))
        cells = cell_posteriors(score_maps)
        weights = cells if weights is None else weights + cells
    assert weights is not None
    return weights / len(classifiers)


def _box_views(
    locnet: ScoringModel,
    inputs: ScaledImages,
    q: int,
    flip: bool,
    weights: np.ndarray,
    cancel: threading.Event | None,
) -> _Views:
    x = inputs.get(q, locnet)
    box_maps = locnet.scores(_batch(x, flip), cancel)
    if box_maps.shape[2:] != weights.shape[2:]:
        raise UnsupportedModel(
            f"at Q={q} the box map of {locnet.name!r} has {box_maps.shape[2]} x "
            f"{box_maps.shape[3]} cells but the score maps of the classifier have "
            f"{weights.shape[2]} x {weights.shape[3]}: they cannot be paired cell by cell"
        )
    return _Views(locnet.manifest, (x.shape[2], x.shape[1]), box_maps, weights)


def _batch(x: np.ndarray, flip: bool) -> np.ndarray:
    return np.ascontiguousarray(np.stack([x, x[:, :, ::-1]]) if flip else x[None])


def localize(
    locnets: Sequence[ScoringModel],
    classifiers: Sequence[ScoringModel],
    image: Image.Image,
    size: tuple[int, int],
    scales: Sequence[int] | None = None,
    flip: bool = True,
    k: int = 5,
    *,
    threshold: float = merging.MERGE_IOU,
    cancel: threading.Event | None = None,
    cache: ScaledImages | None = None,
) -> Localized:
    """The ``k`` most probable classes of an RGB ``image`` by ``classifiers``, each with its box
    merged from the boxes of ``locnets`` (the module's procedure), at ``scales`` (None: each
    net's ``test_scales``). ``size`` is the image's (W, H) as uploaded: boxes are in its pixels
    (``image`` may be a smaller draft decoding of it). ``cancel``: checked before every network
    call and every class's merging (``protocol.Cancelled``)."""
    if not classifiers or not locnets:
        raise ValueError("at least one classifier and one localization net are needed")
    plan = net_scales(locnets, scales)
    every_q = sorted({q for _, qs in plan for q in qs})
    if not every_q:
        raise ValueError("at least one scale is needed")
    inputs = cache if cache is not None else ScaledImages(image)
    dense: dict[str, list[np.ndarray]] = {m.name: [] for m in classifiers}
    weights = {q: _cell_weights(classifiers, inputs, q, flip, dense, cancel) for q in every_q}
    views = [_box_views(net, inputs, q, flip, weights[q], cancel) for net, qs in plan for q in qs]
    posterior = np.mean([np.concatenate(v).mean(axis=0) for v in dense.values()], axis=0)
    started = time.perf_counter()
    predictions = []
    for cls, probability in top_k(posterior, k):
        _check(cancel)
        found, votes = [], []
        for v in views:
            for n, box_map in enumerate(v.box_maps):
                found.append(cell_boxes(box_map, cls, v.manifest, v.rescaled, size, n == 1))
                votes.append(v.weights[n, cls].reshape(-1))
        best = merging.class_box(np.concatenate(found), np.concatenate(votes), threshold)
        x0, y0, x1, y1 = (float(c) for c in best.box)
        predictions.append(
            LocalizedClass(
                cls, probability, (x0, y0, x1, y1), best.score, best.voters, best.clusters
            )
        )
    return Localized(
        posterior=posterior,
        predictions=tuple(predictions),
        scales=tuple(every_q),
        views=views_per_scale("dense", flip) * len(every_q),
        boxes_per_class=sum(v.box_maps.shape[0] * v.box_maps[0, 0].size for v in views),
        merge_s=time.perf_counter() - started,
        members=tuple(m.name for m in classifiers),
        localizers=tuple((net.name, tuple(qs)) for net, qs in plan),
    )


def _check(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled("localization cancelled")
