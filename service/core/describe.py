"""One ``/features`` request's work, off the event loop and with no HTTP: decode the uploaded
bytes within the limits, refuse what the device must not run, and compute the paper's
descriptor (``service.core.features``), in the order and with the checks of ``/classify``."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from model_store.imaging import DecodedImage, decode
from service.core import features, protocol
from service.core.classify import check_batch
from service.core.features import Descriptor, FeatureModel, Pool
from service.settings import Settings


@dataclass(frozen=True)
class FeaturesRequest:
    members: tuple[FeatureModel, ...]
    scales: list[int] | None
    flip: bool
    pool: Pool


@dataclass(frozen=True)
class FeaturesOutcome:
    decoded: DecodedImage
    descriptor: Descriptor
    decode_s: float
    inference_s: float


def describe_bytes(
    data: bytes, request: FeaturesRequest, settings: Settings, cancel: threading.Event
) -> FeaturesOutcome:
    """Decode ``data`` and describe it; raises the image errors, TooLargeForDevice (413),
    UnsupportedModel (422) or ``protocol.Cancelled``."""
    scales = protocol.scales_used(request.members, request.scales)  # type: ignore[arg-type]
    started = time.perf_counter()
    decoded = decode(
        data, settings.image_limits(), max_scale=max(scales) if settings.jpeg_draft else None
    )
    check_batch(decoded.image.size, scales, request.flip, "dense", settings)
    decoded_at = time.perf_counter()
    descriptor = features.describe(
        request.members, decoded.image, request.scales, request.flip, request.pool, cancel=cancel
    )
    return FeaturesOutcome(
        decoded, descriptor, decoded_at - started, time.perf_counter() - decoded_at
    )
