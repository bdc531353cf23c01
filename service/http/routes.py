"""The HTTP endpoints (docs/serving.md): POST /classify, /features and /localize, GET /models,
/healthz, /readyz, /metrics. Each route parses (``params``), calls the core, and answers
(``responses``)."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

from service.core.classify import ClassifyRequest, Outcome, classify_bytes
from service.core.describe import FeaturesRequest, describe_bytes
from service.core.errors import NotReady
from service.core.gate import WorkGate
from service.core.localize_request import LocalizeRequest, localize_bytes
from service.core.protocol import views_per_scale
from service.core.registry import Registry
from service.http.access_log import LOG_FIELDS
from service.http.handlers import retry_after
from service.http.metrics import Metrics
from service.http.params import (
    ClassifyParams,
    FeaturesParams,
    LocalizeParams,
    classify_params,
    features_params,
    localize_params,
)
from service.http.responses import (
    NPY,
    classify_response,
    features_response,
    localize_response,
    milliseconds,
    npy_bytes,
)
from service.http.schemas import (
    ClassifyResponse,
    EnsembleInfo,
    ErrorDetail,
    ErrorResponse,
    FeaturesResponse,
    HealthResponse,
    LocalizeResponse,
    ModelInfo,
    ModelsResponse,
    ReadyResponse,
    SkippedInfo,
)
from service.http.upload import FIELD, read_image_bytes
from service.settings import Settings

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
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


@router.post(
    "/classify",
    response_model=ClassifyResponse,
    response_model_exclude_none=True,
    responses=_errors(400, 404, 413, 415, 422, 500, 503, 504),
    openapi_extra=_UPLOAD_BODY,
    summary="Classify an image with the paper's test protocol",
)
async def classify_image(
    request: Request, params: Annotated[ClassifyParams, Depends(classify_params)]
) -> ClassifyResponse:
    arrived = time.perf_counter()
    service, gate, log_fields = _start(request, params.method, params.flip)
    resolved = service.registry.resolve(params.model)
    log_fields["model"] = resolved.name
    k = params.k(resolved.num_classes)
    job = ClassifyRequest(
        resolved.members,
        params.scales,
        params.flip,
        params.method,
        params.map_classes(resolved.num_classes),
    )
    outcome, queue_s = await _admitted(request, service, gate, log_fields, classify_bytes, job)
    response = classify_response(resolved, params, outcome, k, time.perf_counter() - arrived)
    _record(service.metrics, log_fields, outcome, queue_s, response)
    return response


def _start(
    request: Request, protocol: str, flip: bool
) -> tuple[ServiceState, WorkGate, dict[str, Any]]:
    """The service, its gate (``NotReady`` until the models are loaded) and the request's
    access-log fields, which the log middleware reads when the answer has gone."""
    service = _service(request)
    gate = _ready_gate(service)
    log_fields: dict[str, Any] = {"protocol": protocol, "flip": flip}
    setattr(request.state, LOG_FIELDS, log_fields)
    return service, gate, log_fields


async def _admitted(
    request: Request,
    service: ServiceState,
    gate: WorkGate,
    log_fields: dict[str, Any],
    work: Callable[[bytes, Any, Settings], Any],
    job: object,
) -> tuple[Any, float]:
    """Admitted by the gate: the upload read (its size logged), then ``work(data, job,
    settings)`` on a worker thread; ``(its outcome, seconds queued)``."""
    async with gate.admit():
        data = await read_image_bytes(request, service.settings.max_upload_bytes)
        log_fields["bytes"] = len(data)
        return await gate.run(functools.partial(work, data, job, service.settings))


def _ready_gate(service: ServiceState) -> WorkGate:
    if not service.registry.ready or service.gate is None:
        raise NotReady(service.registry.problem or "the models are still loading")
    return service.gate


def _record(
    metrics: Metrics,
    log_fields: dict[str, Any],
    outcome: Outcome,
    queue_s: float,
    response: ClassifyResponse,
) -> None:
    """A classification's latency and views in the metrics, and its fields in the log line."""
    members = outcome.result.members
    _observe(
        metrics,
        log_fields,
        {m.name: (list(m.scales), m.views) for m in members},
        queue_s,
        outcome.decode_s,
        outcome.inference_s,
        response.timing_ms.total / 1000,
    )
    log_fields.update(
        image=f"{response.image.width}x{response.image.height}",
        top1=response.predictions[0].label,
    )


def _observe(
    metrics: Metrics,
    log_fields: dict[str, Any],
    members: dict[str, tuple[list[int], int]],
    queue_s: float,
    decode_s: float,
    inference_s: float,
    total_s: float,
) -> None:
    """A request's phases and views per member in the metrics and the log line."""
    metrics.observe_phases(queue=queue_s, decode=decode_s, inference=inference_s, total=total_s)
    for name, (_, views) in members.items():
        metrics.views.labels(name).inc(views)
    log_fields.update(
        scales={name: scales for name, (scales, _) in members.items()},
        views={name: views for name, (_, views) in members.items()},
        queue_ms=milliseconds(queue_s),
        decode_ms=milliseconds(decode_s),
        inference_ms=milliseconds(inference_s),
    )


@router.post(
    "/features",
    response_model=FeaturesResponse,
    responses={
        **_errors(400, 404, 413, 415, 422, 500, 503, 504),
        200: {
            "description": "the descriptor as JSON, or with Accept: application/x-npy as a "
            "float32 NumPy .npy file of shape (dimension,)",
            "content": {NPY: {"schema": {"type": "string", "format": "binary"}}},
        },
    },
    openapi_extra=_UPLOAD_BODY,
    summary="The paper's image descriptor: fc7 aggregated densely over scales and flips",
)
async def image_features(
    request: Request, params: Annotated[FeaturesParams, Depends(features_params)]
) -> Response | FeaturesResponse:
    arrived = time.perf_counter()
    service, gate, log_fields = _start(request, f"features-{params.pool}", params.flip)
    resolved = service.registry.resolve(params.model)
    log_fields["model"] = resolved.name
    for member in resolved.members:
        member.check_features()
    job = FeaturesRequest(resolved.members, params.scales, params.flip, params.pool)
    outcome, queue_s = await _admitted(request, service, gate, log_fields, describe_bytes, job)
    total_s = time.perf_counter() - arrived
    per_view = 2 if params.flip else 1
    members = {n: (list(qs), per_view * len(qs)) for n, qs in outcome.descriptor.members}
    _observe(
        service.metrics,
        log_fields,
        members,
        queue_s,
        outcome.decode_s,
        outcome.inference_s,
        total_s,
    )
    if NPY in request.headers.get("accept", ""):
        return Response(npy_bytes(outcome.descriptor.vector), media_type=NPY)
    return features_response(resolved, params, outcome, total_s)


@router.post(
    "/localize",
    response_model=LocalizeResponse,
    responses=_errors(400, 404, 413, 415, 422, 500, 503, 504),
    openapi_extra=_UPLOAD_BODY,
    summary="Localize the top classes of an image: dense boxes merged greedily (Appendix A)",
)
async def localize_image(
    request: Request, params: Annotated[LocalizeParams, Depends(localize_params)]
) -> LocalizeResponse:
    arrived = time.perf_counter()
    service, gate, log_fields = _start(request, "localize", params.flip)
    locnets = service.registry.localization_models(params.model)
    classifier = service.registry.classifier_for(locnets, params.classify_with)
    log_fields.update(model=locnets.name, classified_by=classifier.name)
    job = LocalizeRequest(
        locnets.members,
        classifier.members,
        params.scales,
        params.flip,
        params.k(classifier.num_classes),
    )
    outcome, queue_s = await _admitted(request, service, gate, log_fields, localize_bytes, job)
    total_s = time.perf_counter() - arrived
    result = outcome.result
    per_view = views_per_scale("dense", params.flip)
    runs = {name: (list(result.scales), result.views) for name in result.members}
    runs.update({name: (list(qs), per_view * len(qs)) for name, qs in result.localizers})
    _observe(
        service.metrics,
        log_fields,
        runs,
        queue_s,
        outcome.decode_s,
        outcome.inference_s,
        total_s,
    )
    response = localize_response(locnets.name, classifier, params, outcome, total_s)
    log_fields.update(
        image=f"{response.image.width}x{response.image.height}",
        top1=response.predictions[0].label,
        merge_ms=response.timing_ms.merge,
    )
    return response


@router.get("/models", response_model=ModelsResponse, summary="Models, ensembles, skipped entries")
async def list_models(request: Request) -> ModelsResponse:
    registry = _service(request).registry
    return ModelsResponse(
        default=registry.default,
        models=[
            ModelInfo(
                **engine.manifest.summary(),
                provider=engine.provider,
                int8_note=engine.int8_note,
            )
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
    m.serving(service.registry.models, service.registry.ready)
    return Response(m.render(), media_type=m.content_type)


def _skipped(registry: Registry) -> list[SkippedInfo]:
    return [SkippedInfo(name=s.name, kind=s.kind, reason=s.reason) for s in registry.skipped]
