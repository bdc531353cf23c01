"""One ``/classify`` request's work, off the event loop and with no HTTP: decode the uploaded
bytes, refuse what the device must not run, and classify by the paper's protocol.

The steps and their order are those of docs/serving.md, "Classifying": the image's header is
checked before any pixel is decoded, and the largest network call is checked against
``max_batch_pixels`` before any network runs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from model_store.imaging import DecodedImage, decode, rescaled_size
from service.core import protocol
from service.core.errors import InvalidParameter, TooLargeForDevice
from service.core.protocol import Classification, Method, ScoringModel
from service.settings import Settings


@dataclass(frozen=True)
class ClassifyRequest:
    """What to compute: the models, the scales asked for (None: each model's own), flip, method,
    and the number of classes whose score maps the answer carries (0: none)."""

    members: tuple[ScoringModel, ...]
    scales: list[int] | None
    flip: bool
    method: Method
    map_classes: int = 0


@dataclass(frozen=True)
class Outcome:
    decoded: DecodedImage
    result: Classification
    decode_s: float
    inference_s: float


def classify_bytes(
    data: bytes, request: ClassifyRequest, settings: Settings, cancel: threading.Event
) -> Outcome:
    """Decode ``data`` within the settings' limits and classify it; raises the image errors,
    TooLargeForDevice (413), or ``protocol.Cancelled`` once ``cancel`` is set."""
    scales = protocol.scales_used(request.members, request.scales)
    started = time.perf_counter()
    decoded = decode(
        data, settings.image_limits(), max_scale=max(scales) if settings.jpeg_draft else None
    )
    check_batch(decoded.image.size, scales, request.flip, request.method, settings)
    check_maps(decoded.image.size, request, settings)
    decoded_at = time.perf_counter()
    result = protocol.classify(
        request.members,
        decoded.image,
        request.scales,
        request.flip,
        request.method,
        cancel=cancel,
        keep_maps=request.map_classes > 0,
    )
    return Outcome(decoded, result, decoded_at - started, time.perf_counter() - decoded_at)


def check_batch(
    size: tuple[int, int], scales: Sequence[int], flip: bool, method: Method, settings: Settings
) -> None:
    """Refuse, before any network runs, a request whose largest network call would exceed
    ``max_batch_pixels`` (N x H x W): 413 too_large_for_device."""
    max_pixels = settings.max_batch_pixels
    batch = protocol.largest_batch(size, scales, flip, method, settings.max_batch)
    if batch.pixels > max_pixels:
        raise TooLargeForDevice(
            f"at Q={batch.q} the {method} views of this {size[0]}x{size[1]} image need a batch "
            f"of {batch.n} x {batch.height} x {batch.width} = {batch.pixels} pixels; the limit "
            f"(VERYDEEP_MAX_BATCH_PIXELS) is {max_pixels}: ask for smaller scales or flip=false"
        )


def map_size(size: tuple[int, int], q: int) -> tuple[int, int]:
    """``(height, width)`` of the class score map of an image of ``size`` rescaled to ``q``."""
    width, height = rescaled_size(*size, q)
    return height // 32 - 6, width // 32 - 6


def check_maps(size: tuple[int, int], request: ClassifyRequest, settings: Settings) -> None:
    """Refuse, before any network runs, score maps of more than ``max_map_values`` numbers."""
    if not request.map_classes:
        return
    cells = sum(
        int(np.prod(map_size(size, q)))
        for m in request.members
        for q in protocol.model_scales(m, request.scales)
    )
    values = cells * request.map_classes
    if values > settings.max_map_values:
        raise InvalidParameter(
            f"maps: the score maps of {request.map_classes} classes over these scales and models "
            f"hold {values} numbers for this {size[0]}x{size[1]} image; the limit "
            f"(VERYDEEP_MAX_MAP_VALUES) is {settings.max_map_values}: ask for maps=top, fewer "
            "scales or smaller ones"
        )
