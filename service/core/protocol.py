"""The paper's test protocol (§3.2, §4; docs/serving.md, "Classifying") on decoded images, with
no HTTP in sight.

Per model and scale Q the image is rescaled (smallest side Q) and normalized once, then:

- dense: the fully-convolutional net runs on the whole image, and on its mirror when ``flip``, in
  one batched call; each view's class score map is averaged over space, then softmaxed;
- multicrop: a 5 x 5 grid of 224 x 224 crops (x offsets ``(i * (W - 224)) // 4``, y likewise),
  each crop also mirrored when ``flip``, all of one scale in one batched call; softmax per view;
- combined: the mean of the dense and the multicrop posteriors.

A model's posterior is the mean of its views' posteriors; an ensemble's, the mean of its members'.
The service and the offline evaluator both call ``model_posterior`` (``classify`` for an
ensemble).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np
from PIL import Image

from model_store import Manifest, Preprocessing
from model_store.imaging import rescale, rescaled_size, to_input

Method = Literal["dense", "multicrop", "combined"]
METHODS: tuple[Method, ...] = ("dense", "multicrop", "combined")
CROP = 224
GRID = 5


class ScoringModel(Protocol):
    """A fully-convolutional net: ``scores`` maps ``(N, 3, H, W)`` (float32, or its manifest's
    ``onnx.input_dtype``) to float32 class score maps ``(N, K, H // 32 - 6, W // 32 - 6)``, and
    may raise ``Cancelled`` when ``cancel`` is set before it starts computing."""

    @property
    def name(self) -> str: ...

    @property
    def manifest(self) -> Manifest: ...

    def scores(self, batch: np.ndarray, cancel: threading.Event | None = None) -> np.ndarray: ...


class Cancelled(Exception):
    """``classify`` stopped between two network calls because its ``cancel`` event was set."""


@dataclass(frozen=True)
class MemberResult:
    """One model's share of a classification; ``maps``, when asked for, the dense class score
    map ``(K, h, w)`` of each scale (see ``dense_views``)."""

    name: str
    scales: tuple[int, ...]
    views: int
    posterior: np.ndarray
    maps: dict[int, np.ndarray] | None = None


@dataclass(frozen=True)
class Classification:
    """The ensemble posterior (float64, sums to 1) and what each member computed."""

    posterior: np.ndarray
    members: tuple[MemberResult, ...]

    @property
    def scales(self) -> list[int]:
        """Every Q used by some member, ascending."""
        return sorted({q for m in self.members for q in m.scales})

    @property
    def views(self) -> int:
        """Network evaluations per member (the largest, when members used different scales)."""
        return max(m.views for m in self.members)


def views_per_scale(method: Method, flip: bool) -> int:
    """Network evaluations one model makes per scale."""
    per_position = 2 if flip else 1
    dense, multicrop = per_position, GRID * GRID * per_position
    return {"dense": dense, "multicrop": multicrop, "combined": dense + multicrop}[method]


@dataclass(frozen=True)
class Batch:
    """The shape ``(n, height, width)`` of one network call, at test scale ``q``."""

    q: int
    n: int
    height: int
    width: int

    @property
    def pixels(self) -> int:
        return self.n * self.height * self.width


def largest_batch(
    size: tuple[int, int],
    scales: Sequence[int],
    flip: bool,
    method: Method,
    max_batch: int | None = None,
) -> Batch:
    """The largest network call that classifying an image of ``size`` (width, height) makes:
    dense runs the whole rescaled image and its mirror in one call, multicrop the crops of a
    scale in calls of at most ``max_batch``. Activation memory grows with its ``pixels``."""
    per_position = 2 if flip else 1
    batches = []
    for q in scales:
        width, height = rescaled_size(size[0], size[1], q)
        if method in ("dense", "combined"):
            batches.append(Batch(q, per_position, height, width))
        if method in ("multicrop", "combined"):
            crops = GRID * GRID * per_position
            batches.append(Batch(q, min(crops, max_batch or crops), CROP, CROP))
    return max(batches, key=lambda b: b.pixels)


def softmax(scores: np.ndarray) -> np.ndarray:
    """The softmax over classes (axis 1) of ``(V, K)`` scores, or of every cell of ``(V, K, h,
    w)`` score maps, in float64."""
    z = scores.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


def crop_offsets(length: int, crop: int = CROP, grid: int = GRID) -> list[int]:
    """Offsets of a regular grid of crops along one side, the outer ones touching the borders."""
    if length < crop:
        raise ValueError(f"a side of {length} pixels is shorter than the crop size {crop}")
    return [(i * (length - crop)) // (grid - 1) for i in range(grid)]


def dense_views(
    model: ScoringModel, x: np.ndarray, flip: bool, cancel: threading.Event | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Posteriors ``(V, K)`` of the whole normalized image ``x (3, H, W)`` and its mirror, and
    the view's class score map ``(K, H // 32 - 6, W // 32 - 6)``: with ``flip`` the mean of the
    image's map and the mirror's map mirrored back, so that cell ``(i, j)`` describes the 224
    window at ``(32 j, 32 i)`` of ``x`` (the mirrored window sits ``W mod 32`` pixels from it)."""
    batch = np.stack([x, x[:, :, ::-1]]) if flip else x[None]
    _check(cancel)
    score_maps = model.scores(np.ascontiguousarray(batch), cancel)
    posteriors = softmax(score_maps.mean(axis=(2, 3), dtype=np.float64))
    score_map = (score_maps[0] + score_maps[1][:, :, ::-1]) / 2 if flip else score_maps[0]
    return posteriors, score_map


def dense_posteriors(
    model: ScoringModel, x: np.ndarray, flip: bool, cancel: threading.Event | None = None
) -> np.ndarray:
    """Posteriors ``(V, K)`` of the whole normalized image ``x (3, H, W)`` and its mirror."""
    return dense_views(model, x, flip, cancel)[0]


def multicrop_posteriors(
    model: ScoringModel, x: np.ndarray, flip: bool, cancel: threading.Event | None = None
) -> np.ndarray:
    """Posteriors ``(V, K)`` of the 5 x 5 grid of 224 x 224 crops of ``x (3, H, W)`` (and their
    mirrors)."""
    _, height, width = x.shape
    crops = [
        x[:, top : top + CROP, left : left + CROP]
        for top in crop_offsets(height)
        for left in crop_offsets(width)
    ]
    if flip:
        crops += [c[:, :, ::-1] for c in crops]
    _check(cancel)
    score_maps = model.scores(np.ascontiguousarray(np.stack(crops)), cancel)
    return softmax(score_maps.mean(axis=(2, 3), dtype=np.float64))


@dataclass
class ScaledImages:
    """The rescaled and normalized versions of one image, computed once and shared by the
    members of an ensemble (rescaling per Q, normalization per Q and preprocessing)."""

    image: Image.Image
    rescaled: dict[int, Image.Image] = field(default_factory=dict)
    normalized: dict[tuple[int, Preprocessing, str, object], np.ndarray] = field(
        default_factory=dict
    )

    def get(self, q: int, model: ScoringModel) -> np.ndarray:
        """``model``'s input at Q: the image rescaled (smallest side Q) and normalized by its
        manifest's preprocessing, in its input dtype (float16 for a float16 export), with
        Pillow and numpy; or by the preprocessing graph of the model's engine where it has one
        (``preprocess``: ``VERYDEEP_PREPROCESS=graph``, docs/gpu.md, "Preprocessing on the
        GPU"), which gives the same size within a pixel level."""
        preprocessing = model.manifest.preprocessing
        dtype = model.manifest.onnx.input_dtype
        graph = getattr(model, "preprocess", None)
        key = (q, preprocessing, dtype, graph)
        if key not in self.normalized:
            if graph is not None:
                self.normalized[key] = graph.rescaled_input(self.image, q, preprocessing, dtype)
            else:
                if q not in self.rescaled:
                    self.rescaled[q] = rescale(self.image, q)
                self.normalized[key] = to_input(self.rescaled[q], preprocessing, dtype)
        return self.normalized[key]


def model_posterior(
    model: ScoringModel,
    image: Image.Image,
    scales: Sequence[int],
    flip: bool = True,
    method: Method = "dense",
    *,
    cancel: threading.Event | None = None,
    cache: ScaledImages | None = None,
    keep_maps: bool = False,
) -> MemberResult:
    """One model's posterior over ``scales`` of an RGB image, by ``method``. ``cache`` (of this
    same image) lets several models share the rescaled images; ``keep_maps`` keeps the dense
    class score map of each scale (dense and combined only)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    if not scales:
        raise ValueError("at least one scale is needed")
    inputs = cache if cache is not None else ScaledImages(image)
    if keep_maps and method == "multicrop":
        raise ValueError("score maps come from dense evaluation: method dense or combined")
    dense: list[np.ndarray] = []
    crops: list[np.ndarray] = []
    maps: dict[int, np.ndarray] = {}
    for q in scales:
        x = inputs.get(q, model)
        if method in ("dense", "combined"):
            posteriors, maps[q] = dense_views(model, x, flip, cancel)
            dense.append(posteriors)
        if method in ("multicrop", "combined"):
            crops.append(multicrop_posteriors(model, x, flip, cancel))
    parts = [np.concatenate(views).mean(axis=0) for views in (dense, crops) if views]
    return MemberResult(
        name=model.name,
        scales=tuple(scales),
        views=views_per_scale(method, flip) * len(scales),
        posterior=np.mean(parts, axis=0),
        maps=maps if keep_maps else None,
    )


def model_scales(model: ScoringModel, scales: Sequence[int] | None) -> Sequence[int]:
    """The scales a model runs at: those asked for, or by default its manifest's
    ``test_scales``. The one statement of the default rule."""
    return scales if scales is not None else model.manifest.test_scales


def scales_used(models: Sequence[ScoringModel], scales: Sequence[int] | None) -> list[int]:
    """Every Q that some model of ``models`` runs at (each Q once, in the order first met)."""
    return list(dict.fromkeys(q for m in models for q in model_scales(m, scales)))


def classify(
    models: Sequence[ScoringModel],
    image: Image.Image,
    scales: Sequence[int] | None = None,
    flip: bool = True,
    method: Method = "dense",
    *,
    cancel: threading.Event | None = None,
    keep_maps: bool = False,
) -> Classification:
    """Classify an RGB image with one model or an ensemble (the mean of members' posteriors).

    ``scales`` None: each member uses its manifest's ``test_scales``. ``cancel``: an event checked
    before every network call; when set, ``Cancelled`` is raised.
    """
    if not models:
        raise ValueError("at least one model is needed")
    classes = {m.manifest.num_classes for m in models}
    if len(classes) != 1:
        raise ValueError(f"ensemble members disagree on the number of classes: {sorted(classes)}")
    cache = ScaledImages(image)
    members = tuple(
        model_posterior(
            m,
            image,
            model_scales(m, scales),
            flip,
            method,
            cancel=cancel,
            cache=cache,
            keep_maps=keep_maps,
        )
        for m in models
    )
    posterior = np.mean([m.posterior for m in members], axis=0)
    return Classification(posterior=posterior, members=members)


def top_k(posterior: np.ndarray, k: int) -> list[tuple[int, float]]:
    """The ``k`` most probable classes as ``(index, probability)``, most probable first; ties
    keep the lower index first."""
    order = np.argsort(-posterior, kind="stable")[:k]
    return [(int(i), float(posterior[i])) for i in order]


def _check(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled("classification cancelled")
