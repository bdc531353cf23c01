"""One structured (JSON) log line and one metrics count per HTTP request, as ASGI middleware.

Each request has an ID, in its log line and in the ``X-Request-ID`` response header: the one the
client or proxy sent (nginx's ``$request_id`` in deploy/nginx/verydeep.conf), so that their logs
and this one can be joined, or a new one. A sent ID that is not a short token (at most 128
letters, digits and ``._:-``) is replaced rather than logged: a client controls it.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from typing import Any

from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.http.metrics import Metrics

log = logging.getLogger("verydeep.access")

LOG_FIELDS = "log_fields"
"""Key of ``request.state`` under which a route adds its own fields to the log line."""

REQUEST_ID = "request_id"
"""Key of ``request.state`` that holds the request's ID (for the 500 handler, which answers from
outside this middleware)."""
REQUEST_ID_HEADER = b"x-request-id"
_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")


def request_id(scope: Scope) -> str:
    """The request's ID: the ``X-Request-ID`` it came with when that is a short token, else new."""
    for name, value in scope.get("headers", ()):
        if name == REQUEST_ID_HEADER:
            if _REQUEST_ID.fullmatch(value):
                return value.decode("ascii")
            break
    return uuid.uuid4().hex


def route_template(scope: Scope, arrived: Scope, status: int) -> str:
    """The path template of the route that answered: FastAPI puts its own routes in the scope,
    not the plain Starlette routes and mounts it also serves (``/openapi.json``, the
    ``/docs/assets`` and ``/static`` files), so those are matched again here on the scope as it
    ``arrived`` (a mount rewrites the paths); ``unmatched`` where none is."""
    route = getattr(scope.get("route"), "path", None)
    if route is not None or status == 404:
        return route or "unmatched"
    for candidate in getattr(scope.get("app"), "routes", ()):
        match, _ = candidate.matches(arrived)
        if match is Match.FULL:
            return getattr(candidate, "path", None) or "unmatched"
    return "unmatched"


class AccessLogMiddleware:
    """Logs method, path, route, status, duration, client and the route's fields; counts the
    request in ``verydeep_requests_total`` by route template (never by raw path, which a client
    controls) and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        arrived = dict(scope)
        state: dict[str, Any] = scope.setdefault("state", {})
        status = 500
        rid = state[REQUEST_ID] = request_id(scope)

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [*message.get("headers", ()), (REQUEST_ID_HEADER, rid.encode())]
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            route = route_template(scope, arrived, status)
            self.metrics.requests.labels(route, str(status)).inc()
            client = scope.get("client")
            fields: dict[str, Any] = {
                "method": scope["method"],
                "path": scope["path"],
                "route": route,
                "status": status,
                "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                "client": client[0] if client else None,
                REQUEST_ID: rid,
            }
            for key, value in state.get(LOG_FIELDS, {}).items():
                fields.setdefault(key, value)
            log.info(json.dumps(fields, default=str))
