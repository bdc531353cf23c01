"""HTTP endpoints (SPEC §6): POST /classify, GET /models, /healthz, /readyz, /metrics."""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse

from model_store.imaging import DecodedImage, decode
from service.core import protocol
from service.core.errors import InvalidParameter, NotReady, TooLargeForDevice
from service.core.gate import WorkGate
from service.core.protocol import Classification, Method
from service.core.registry import Registry, Resolved, shown
from service.http.access_log import LOG_FIELDS
from service.http.handlers import retry_after
from service.http.metrics import Metrics
from service.http.schemas import (
    ClassifyResponse,
    EnsembleInfo,
    ErrorDetail,
    ErrorResponse,
    HealthResponse,
    ImageSize,
    ModelInfo,
    ModelsResponse,
    Prediction,
    ReadyResponse,
    SkippedInfo,
    Timing,
)
from service.http.upload import FIELD, read_image_bytes
from service.settings import Settings

DEFAULT_TOP_K = 5
QUERY_PARAMETERS = ("model", "scales", "flip", "method", "top_k")
_DIGITS = re.compile(r"[0-9]{1,6}")

router = APIRouter()


@dataclass
class ServiceState:
    """What the routes share; ``gate`` exists while the app's lifespan runs."""

    settings: Settings
    registry: Registry
    metrics: Metrics
    gate: WorkGate | None = None


def _service(request: Request) -> ServiceState:
    return request.app.state.service


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorResponse} for status in statuses}


_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": [FIELD],
                    "properties": {FIELD: {"type": "string", "format": "binary"}},
                }
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


@router.post(
    "/classify",
    response_model=ClassifyResponse,
    responses=_errors(400, 404, 413, 415, 422, 500, 503, 504),
    openapi_extra=_UPLOAD_BODY,
    summary="Classify an image with the paper's test protocol",
)
async def classify_image(
    request: Request,
    model: Annotated[
        str | None,
        Query(description="model name, ensemble name, or comma-separated model names"),
    ] = None,
    scales: Annotated[
        str | None,
        Query(
            description="comma-separated test scales Q, each in [224, VERYDEEP_MAX_SCALE] "
            "(default: each model's test_scales)",
            examples=["256,384,512"],
        ),
    ] = None,
    flip: Annotated[bool, Query(description="add the horizontally flipped views")] = True,
    method: Annotated[Method, Query(description="dense, multicrop or combined")] = "dense",
    top_k: Annotated[
        int | None, Query(ge=1, description="1..K (default 5, or K when K < 5)")
    ] = None,
) -> ClassifyResponse:
    arrived = time.perf_counter()
    service = _service(request)
    settings, registry, gate = service.settings, service.registry, service.gate
    if not registry.ready or gate is None:
        raise NotReady(registry.problem or "the models are still loading")
    log_fields: dict[str, Any] = {"protocol": method, "flip": flip}
    setattr(request.state, LOG_FIELDS, log_fields)
    check_query(request)
    resolved = registry.resolve(model)
    log_fields["model"] = resolved.name
    requested_scales = parse_scales(scales, settings) if scales is not None else None
    k = _top_k(top_k, resolved.num_classes)

    limits = settings.image_limits()
    all_scales = requested_scales or _default_scales(resolved)
    draft_q = max(all_scales) if settings.jpeg_draft else None

    def work(cancel: threading.Event) -> tuple[DecodedImage, Classification, float, float]:
        t0 = time.perf_counter()
        decoded = decode(data, limits, max_scale=draft_q)
        check_batch(decoded.image.size, all_scales, flip, method, settings)
        t1 = time.perf_counter()
        result = protocol.classify(
            resolved.members, decoded.image, requested_scales, flip, method, cancel=cancel
        )
        return decoded, result, t1 - t0, time.perf_counter() - t1

    async with gate.admit():
        data = await read_image_bytes(request, settings.max_upload_bytes)
        log_fields["bytes"] = len(data)
        (decoded, result, decode_s, inference_s), queue_s = await gate.run(work)
    total_s = time.perf_counter() - arrived

    labels = resolved.labels
    response = ClassifyResponse(
        model=resolved.name,
        members=[m.name for m in result.members],
        method=method,
        scales=result.scales,
        flip=flip,
        views=result.views,
        predictions=[
            Prediction(index=i, label=labels[i], probability=p)
            for i, p in protocol.top_k(result.posterior, k)
        ],
        image=ImageSize(width=decoded.width, height=decoded.height),
        timing_ms=Timing(decode=_ms(decode_s), inference=_ms(inference_s), total=_ms(total_s)),
    )
    metrics = service.metrics
    metrics.observe_phases(queue=queue_s, decode=decode_s, inference=inference_s, total=total_s)
    for member in result.members:
        metrics.views.labels(member.name).inc(member.views)
    log_fields.update(
        scales={m.name: list(m.scales) for m in result.members},
        views={m.name: m.views for m in result.members},
        image=f"{decoded.width}x{decoded.height}",
        top1=response.predictions[0].label,
        queue_ms=_ms(queue_s),
        decode_ms=response.timing_ms.decode,
        inference_ms=response.timing_ms.inference,
    )
    return response


def check_query(request: Request) -> None:
    """A parameter given twice is ambiguous (proxies and frameworks disagree on which one
    counts): 422. ``top_k`` must be plain ASCII digits (no '2_0', '+3' or '٣')."""
    counts = Counter(key for key, _ in request.query_params.multi_items())
    repeated = [name for name in QUERY_PARAMETERS if counts[name] > 1]
    if repeated:
        raise InvalidParameter(f"{repeated[0]}: given {counts[repeated[0]]} times; give it once")
    top_k = request.query_params.get("top_k")
    if top_k is not None and not _DIGITS.fullmatch(top_k.strip()):
        raise InvalidParameter(f"top_k: {shown(top_k)} is not a positive integer")


def check_batch(
    size: tuple[int, int], scales: list[int], flip: bool, method: Method, settings: Settings
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


def parse_scales(text: str, settings: Settings) -> list[int]:
    """``"256,384,512"`` to ``[256, 384, 512]``; each Q in [224, max_scale], no repeats. Only
    ASCII digits count (Python's ``int`` would take '2_56', '+256' or Unicode digits)."""
    parts = [p.strip() for p in text.split(",")]
    if not all(_DIGITS.fullmatch(p) for p in parts):
        raise InvalidParameter(f"scales: {shown(text)} is not a comma-separated list of integers")
    values = [int(p) for p in parts]
    if len(values) > settings.max_scales_per_request:
        raise InvalidParameter(
            f"scales: {len(values)} scales; at most {settings.max_scales_per_request} per request"
        )
    bad = [q for q in values if not 224 <= q <= settings.max_scale]
    if bad:
        raise InvalidParameter(
            f"scales: {bad} out of range; each Q must be in [224, {settings.max_scale}]"
        )
    if len(set(values)) != len(values):
        raise InvalidParameter(f"scales: {shown(text)} lists a scale twice")
    return values


def _top_k(requested: int | None, num_classes: int) -> int:
    if requested is None:
        return min(DEFAULT_TOP_K, num_classes)
    if requested > num_classes:
        raise InvalidParameter(f"top_k: {requested} exceeds the {num_classes} classes")
    return requested


def _default_scales(resolved: Resolved) -> list[int]:
    return [q for m in resolved.members for q in m.manifest.test_scales]


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


@router.get("/models", response_model=ModelsResponse, summary="Models, ensembles, skipped entries")
async def list_models(request: Request) -> ModelsResponse:
    registry = _service(request).registry
    return ModelsResponse(
        default=registry.default,
        models=[
            ModelInfo(**engine.manifest.summary(), provider=engine.provider)
            for _, engine in sorted(registry.models.items())
        ],
        ensembles=[
            EnsembleInfo(name=name, members=members)
            for name, members in sorted(registry.ensembles.items())
        ],
        skipped=_skipped(registry),
        changed_on_disk=registry.changed_on_disk(),
    )


@router.get("/healthz", response_model=HealthResponse, summary="The process is up")
async def healthz() -> HealthResponse:
    return HealthResponse()


@router.get(
    "/readyz",
    response_model=ReadyResponse,
    responses={503: {"model": ReadyResponse}},
    summary="200 once every model is loaded and warmed up, 503 before",
)
async def readyz(request: Request) -> Response:
    service = _service(request)
    registry = service.registry
    ready = registry.ready and service.gate is not None
    changed = registry.changed_on_disk()
    problem = registry.problem
    if changed and not problem:
        problem = (
            "model files changed on disk since they were loaded ("
            + "; ".join(f"{name}: {change}" for name, change in changed.items())
            + "): the "
            "verified copies loaded at start-up are still served; a restart verifies the store "
            "again"
        )
    body = ReadyResponse(
        ready=ready,
        state=registry.state,
        models=sorted(registry.models),
        ensembles=sorted(registry.ensembles),
        skipped=_skipped(registry),
        changed_on_disk=changed,
        problem=problem,
        error=None
        if ready
        else ErrorDetail(
            code=NotReady.code, message=registry.problem or "the models are still loading"
        ),
    )
    headers = None if ready else retry_after(service.settings)
    return JSONResponse(
        body.model_dump(mode="json"), status_code=200 if ready else 503, headers=headers
    )


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    service = _service(request)
    m = service.metrics
    m.models_loaded.set(len(service.registry.models))
    m.ready.set(1 if service.registry.ready else 0)
    return Response(m.render(), media_type=m.content_type)


def _skipped(registry: Registry) -> list[SkippedInfo]:
    return [SkippedInfo(name=s.name, kind=s.kind, reason=s.reason) for s in registry.skipped]
