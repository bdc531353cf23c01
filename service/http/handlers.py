"""Every failure as JSON ``{"error": {"code", "message"}}`` (docs/serving.md, "Errors"), never
a stack trace.

Refusals (``service.core.errors.ServiceError`` and ``model_store.imaging.ImageError``) carry
their status, code and whether they are retryable: one handler reads them. FastAPI's validation
errors and Starlette's 404/405 get the same shape; a ``MemoryError`` is a retryable 503; anything
unexpected becomes a logged 500 whose body says nothing about the internals.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from model_store.imaging import ImageError
from model_store.scales import quoted
from service.core.errors import InvalidParameter, OutOfMemory, ServiceError
from service.http.access_log import REQUEST_ID, REQUEST_ID_HEADER
from service.settings import Settings

log = logging.getLogger(__name__)

_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}
"""Codes of the errors Starlette raises itself (unknown path, wrong method)."""


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(error_body(code, message), status_code=status, headers=headers)


def retry_after(settings: Settings) -> dict[str, str]:
    """The ``Retry-After`` header of every retryable answer (503)."""
    return {"Retry-After": str(settings.retry_after)}


def refusal_response(request: Request, exc: ServiceError | ImageError) -> JSONResponse:
    """A refusal as its JSON answer, with ``Retry-After`` when it is retryable."""
    headers = dict(getattr(exc, "headers", {}))
    if exc.retryable:
        headers.update(retry_after(request.app.state.service.settings))
    return error_response(exc.status, exc.code, str(exc), headers or None)


def install_error_handlers(app: FastAPI) -> None:
    """Route every exception a request can raise to one JSON error shape."""

    async def refusal(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ServiceError | ImageError)
        return refusal_response(request, exc)

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return error_response(422, InvalidParameter.code, describe_validation_errors(exc.errors()))

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, http_error_message(request, exc), exc.headers)

    async def memory_error(request: Request, exc: Exception) -> JSONResponse:
        log.error("out of memory on %s %s", request.method, request.url.path)
        message = "the server ran out of memory for this request; the request can be retried"
        return refusal_response(request, OutOfMemory(message))

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Answered from outside the access log's middleware: its request ID is added here.
        rid = getattr(request.state, REQUEST_ID, None)
        path = request.url.path
        log.exception("unhandled error on %s %s (request %s)", request.method, path, rid)
        headers = {REQUEST_ID_HEADER.decode(): rid} if rid else None
        return error_response(500, "internal_error", "internal server error", headers)

    app.add_exception_handler(ServiceError, refusal)
    app.add_exception_handler(ImageError, refusal)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(MemoryError, memory_error)
    app.add_exception_handler(Exception, unexpected)


def http_error_message(request: Request, exc: StarletteHTTPException) -> str:
    """Starlette's 404 and 405 ("Not Found", "Method Not Allowed") said as the service's other
    refusals are: what was asked, and what there is instead."""
    path = quoted(request.url.path)
    if exc.status_code == 404:
        return f"no route at {path}; the routes are listed at /docs"
    if exc.status_code == 405:
        allowed = (exc.headers or {}).get("allow") or (exc.headers or {}).get("Allow")
        also = f"; it takes {allowed}" if allowed else ""
        return f"{request.method} is not a method of {path}{also}"
    return str(exc.detail)


_LOCATIONS = frozenset({"query", "path", "header", "cookie", "body"})


def describe_validation_errors(errors: Any) -> str:
    """FastAPI's error list as one sentence in the service's own words, as its other refusals
    (``method: 'x' is not one of dense, multicrop, combined``), parameter by parameter."""
    parts = []
    for e in errors:
        loc = [str(p) for p in e.get("loc", ())]
        if len(loc) > 1 and loc[0] in _LOCATIONS:
            loc = loc[1:]
        parts.append(f"{'.'.join(loc) or 'request'}: {validation_message(e)}")
    return "; ".join(parts) or "invalid request"


def validation_message(error: Any) -> str:
    """One pydantic error (a dict of ``errors()``) as the service words a refusal: what was
    given, quoted, and what is accepted. Also ``verydeep serve``'s words for a bad setting."""
    kind = str(error.get("type", ""))
    ctx = error.get("ctx") or {}
    given = error.get("input")
    shown = quoted(given) if isinstance(given, str) else repr(given)
    if kind in ("literal_error", "enum"):
        choices = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        if choices:
            return f"{shown} is not one of {', '.join(choices)}"
    if kind in ("bool_parsing", "bool_type"):
        return f"{shown} is not true or false"
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return f"{shown} is not an integer"
    if kind in ("float_parsing", "float_type"):
        return f"{shown} is not a number"
    bounds = {
        "greater_than_equal": ("at least", "ge"),
        "greater_than": ("more than", "gt"),
        "less_than_equal": ("at most", "le"),
        "less_than": ("less than", "lt"),
    }
    if kind in bounds and bounds[kind][1] in ctx:
        words, key = bounds[kind]
        value = given if isinstance(given, str) and len(given) <= 20 else shown
        return f"{value} out of range; it must be {words} {ctx[key]}"
    if kind == "missing":
        return "required, and not given"
    message = str(error.get("msg", "invalid"))
    return message.removeprefix("Value error, ")
