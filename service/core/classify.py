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

from model_store.imaging import DecodedImage, decode
from service.core import protocol
from service.core.errors import TooLargeForDevice
from service.core.protocol import Classification, Method, ScoringModel
from service.settings import Settings


@dataclass(frozen=True)
class ClassifyRequest:
    """What to compute: the models, the scales asked for (None: each model's own), flip, method."""

    members: tuple[ScoringModel, ...]
    scales: list[int] | None
    flip: bool
    method: Method


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
    decoded_at = time.perf_counter()
    result = protocol.classify(
        request.members,
        decoded.image,
        request.scales,
        request.flip,
        request.method,
        cancel=cancel,
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
