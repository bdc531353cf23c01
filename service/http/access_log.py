"""One structured (JSON) log line and one metrics count per HTTP request, as ASGI middleware."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.http.metrics import Metrics

log = logging.getLogger("verydeep.access")

LOG_FIELDS = "log_fields"
"""Key of ``request.state`` under which a route adds its own fields to the log line."""


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

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
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
            }
            for key, value in state.get(LOG_FIELDS, {}).items():
                fields.setdefault(key, value)
            log.info(json.dumps(fields, default=str))
