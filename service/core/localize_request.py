"""One ``/localize`` request's work, off the event loop and with no HTTP: decode the uploaded
bytes within the limits, refuse what the device must not run and what merging must not take,
and localize by the paper's procedure (``service.core.localize``), in the order and with the
checks of ``/classify``."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from model_store.imaging import DecodedImage, decode
from service.core.classify import check_batch, map_size
from service.core.errors import InvalidParameter
from service.core.localize import Localized, localize, net_scales
from service.core.protocol import ScoringModel, views_per_scale
from service.settings import Settings


@dataclass(frozen=True)
class LocalizeRequest:
    """The localisation nets, the classifier's members, the scales (None: each net's
    test_scales), flip and the number of classes to localize."""

    locnets: tuple[ScoringModel, ...]
    classifiers: tuple[ScoringModel, ...]
    scales: list[int] | None
    flip: bool
    k: int

    def plan(self) -> list[tuple[ScoringModel, list[int]]]:
        """Each localisation net with the scales it runs at (``localize.net_scales``)."""
        return net_scales(self.locnets, self.scales)

    def every_scale(self) -> list[int]:
        """The scales the classifier runs at: every scale a localisation net runs at."""
        return sorted({q for _, qs in self.plan() for q in qs})


@dataclass(frozen=True)
class LocalizeOutcome:
    decoded: DecodedImage
    result: Localized
    decode_s: float
    inference_s: float


def boxes_per_class(size: tuple[int, int], scales: Sequence[int], flip: bool) -> int:
    """How many boxes one net gives one class for an image of ``size`` (W, H): cells x views."""
    cells = 0
    for q in scales:
        h, w = map_size(size, q)
        cells += h * w
    return cells * views_per_scale("dense", flip)


def check_boxes(
    size: tuple[int, int],
    plan: Sequence[tuple[object, Sequence[int]]],
    flip: bool,
    settings: Settings,
) -> None:
    """Refuse, before any network runs, more boxes per class than ``max_localize_boxes``, over
    the localisation nets and their scales of ``plan``."""
    n = sum(boxes_per_class(size, scales, flip) for _, scales in plan)
    if n > settings.max_localize_boxes:
        nets = f" of {len(plan)} localization nets" if len(plan) > 1 else ""
        raise InvalidParameter(
            f"scales: at these scales this {size[0]}x{size[1]} image gives {n} boxes per class "
            f"to merge{nets}; the limit (VERYDEEP_MAX_LOCALIZE_BOXES) is "
            f"{settings.max_localize_boxes}: ask for fewer scales, smaller ones, fewer nets or "
            "flip=false"
        )


def localize_bytes(
    data: bytes, request: LocalizeRequest, settings: Settings, cancel: threading.Event
) -> LocalizeOutcome:
    """Decode ``data`` and localize it; raises the image errors, TooLargeForDevice (413),
    InvalidParameter or UnsupportedModel (422), or ``protocol.Cancelled``."""
    scales = request.every_scale()
    started = time.perf_counter()
    decoded = decode(
        data, settings.image_limits(), max_scale=max(scales) if settings.jpeg_draft else None
    )
    size = (decoded.width, decoded.height)
    check_batch(decoded.image.size, scales, request.flip, "dense", settings)
    check_boxes(decoded.image.size, request.plan(), request.flip, settings)
    decoded_at = time.perf_counter()
    result = localize(
        request.locnets,
        request.classifiers,
        decoded.image,
        size,
        request.scales,
        request.flip,
        request.k,
        cancel=cancel,
    )
    return LocalizeOutcome(decoded, result, decoded_at - started, time.perf_counter() - decoded_at)
