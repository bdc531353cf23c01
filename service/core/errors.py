"""Every failure as JSON ``{"error": {"code", "message"}}`` (SPEC §6), never a stack trace.

``ServiceError`` subclasses carry their status and code; image errors from ``model_store.imaging``
are mapped here; FastAPI's own validation errors and Starlette's 404/405 get the same shape, and
anything unexpected becomes a logged 500 whose body says nothing about the internals.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from model_store.imaging import ImageError, ImageShapeError, ImageTooLarge, UndecodableImage
from service.core.engine import InferenceError

log = logging.getLogger(__name__)


class ServiceError(Exception):
    """A request that cannot be served; ``status`` and ``code`` say how the client is told."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class BadRequest(ServiceError):
    status, code = 400, "bad_request"


class UnknownModel(ServiceError):
    status, code = 404, "unknown_model"


class PayloadTooLarge(ServiceError):
    """The body is over the byte limit. The connection is closed after the answer: the rest of
    the body (which may never end) is not read."""

    status, code = 413, "payload_too_large"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message, headers={"Connection": "close", **(headers or {})})


class TooLargeForDevice(ServiceError):
    """The views of the request would need a larger network batch than the device is allowed."""

    status, code = 413, "too_large_for_device"


class UnsupportedMediaType(ServiceError):
    status, code = 415, "unsupported_media_type"


class InvalidParameter(ServiceError):
    status, code = 422, "invalid_parameter"


class NotReady(ServiceError):
    status, code = 503, "not_ready"


class Overloaded(ServiceError):
    status, code = 503, "overloaded"


class TimedOut(ServiceError):
    status, code = 504, "timeout"


class InferenceFailed(ServiceError):
    status, code = 503, "inference_failed"


class OutOfMemory(ServiceError):
    status, code = 503, "out_of_memory"


IMAGE_ERRORS: dict[type[ImageError], tuple[int, str]] = {
    UndecodableImage: (400, "undecodable_image"),
    ImageTooLarge: (413, "image_too_large"),
    ImageShapeError: (422, "unsupported_image_shape"),
}

_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(error_body(code, message), status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """Route every exception a request can raise to one JSON error shape."""

    async def service_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ServiceError)
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    async def image_error(request: Request, exc: Exception) -> JSONResponse:
        status, code = IMAGE_ERRORS.get(type(exc), (400, "undecodable_image"))
        return error_response(status, code, str(exc))

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return error_response(422, InvalidParameter.code, describe_validation_errors(exc.errors()))

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail), exc.headers)

    async def inference_error(request: Request, exc: Exception) -> JSONResponse:
        # The engine logged what onnxruntime said; the client learns which model, not why.
        assert isinstance(exc, InferenceError)
        return _retryable(request, InferenceFailed(f"inference failed on model {exc.model!r}"))

    async def memory_error(request: Request, exc: Exception) -> JSONResponse:
        log.error("out of memory on %s %s", request.method, request.url.path)
        return _retryable(request, OutOfMemory("the server ran out of memory for this request"))

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", "internal server error")

    app.add_exception_handler(ServiceError, service_error)
    app.add_exception_handler(ImageError, image_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(InferenceError, inference_error)
    app.add_exception_handler(MemoryError, memory_error)
    app.add_exception_handler(Exception, unexpected)


def _retryable(request: Request, error: ServiceError) -> JSONResponse:
    retry_after = getattr(request.app.state.service.settings, "retry_after", 1)
    message = f"{error.message}; the request can be retried"
    return error_response(error.status, error.code, message, {"Retry-After": str(retry_after)})


def describe_validation_errors(errors: Any) -> str:
    """FastAPI's error list as one sentence: ``query.top_k: Input should be ...``."""
    parts = []
    for e in errors:
        loc = ".".join(str(p) for p in e.get("loc", ())) or "request"
        parts.append(f"{loc}: {e.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"
