"""The paper's image descriptor (Appendix B; docs/serving.md, "Features"), with no HTTP in
sight: fc7's activations of the fully-convolutional net, aggregated densely over the image.

Per model and scale Q, the image rescaled to Q (smallest side) and normalized as for
classification runs whole through the net; its fc7 map ``(F, h, w)`` is averaged over space, and
with ``flip`` averaged with its mirror's. The scales' descriptors are averaged (``mean``) or
concatenated in ascending Q (``stack``), then L2-normalised. An ensemble's descriptor is its
members' descriptors concatenated in member order and L2-normalised again.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
from PIL import Image

from model_store import Manifest
from service.core.protocol import ScaledImages, model_scales

Pool = Literal["mean", "stack"]
POOLS: tuple[Pool, ...] = ("mean", "stack")


class FeatureModel(Protocol):
    """A fully-convolutional net with fc7's maps: ``features`` maps ``(N, 3, H, W)`` (in its
    ``onnx.input_dtype``) to float32 ``(N, F, H // 32 - 6, W // 32 - 6)``."""

    @property
    def name(self) -> str: ...

    @property
    def manifest(self) -> Manifest: ...

    def features(self, batch: np.ndarray, cancel: threading.Event | None = None) -> np.ndarray: ...


@dataclass(frozen=True)
class Descriptor:
    """The L2-normalised descriptor (float32) and the scales each member used."""

    vector: np.ndarray
    members: tuple[tuple[str, tuple[int, ...]], ...]

    @property
    def scales(self) -> list[int]:
        return sorted({q for _, qs in self.members for q in qs})


def l2_normalised(v: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 0 else v


def scale_descriptor(
    model: FeatureModel, x: np.ndarray, flip: bool, cancel: threading.Event | None = None
) -> np.ndarray:
    """``(F,)``: fc7's map of the normalized image ``x (3, H, W)`` averaged over space, and
    over the image and its mirror with ``flip``."""
    batch = np.stack([x, x[:, :, ::-1]]) if flip else x[None]
    maps = model.features(np.ascontiguousarray(batch), cancel)
    return maps.mean(axis=(0, 2, 3), dtype=np.float64)


def model_descriptor(
    model: FeatureModel,
    inputs: ScaledImages,
    scales: Sequence[int],
    flip: bool,
    pool: Pool,
    cancel: threading.Event | None = None,
) -> np.ndarray:
    """One model's L2-normalised descriptor over ``scales`` (``stack``: ascending Q)."""
    if pool not in POOLS:
        raise ValueError(f"unknown pool {pool!r}; use mean or stack")
    ordered = sorted(scales) if pool == "stack" else list(scales)
    per_scale = [scale_descriptor(model, inputs.get(q, model), flip, cancel) for q in ordered]
    pooled = np.mean(per_scale, axis=0) if pool == "mean" else np.concatenate(per_scale)
    return l2_normalised(pooled)


def describe(
    models: Sequence[FeatureModel],
    image: Image.Image,
    scales: Sequence[int] | None = None,
    flip: bool = True,
    pool: Pool = "mean",
    *,
    cancel: threading.Event | None = None,
) -> Descriptor:
    """The descriptor of an RGB image by one model or an ensemble (members concatenated)."""
    if not models:
        raise ValueError("at least one model is needed")
    inputs = ScaledImages(image)
    parts, used = [], []
    for m in models:
        qs = tuple(model_scales(m, scales))  # type: ignore[arg-type]
        parts.append(model_descriptor(m, inputs, qs, flip, pool, cancel))
        used.append((m.name, qs))
    vector = parts[0] if len(parts) == 1 else l2_normalised(np.concatenate(parts))
    return Descriptor(vector.astype(np.float32), tuple(used))
