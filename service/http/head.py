"""``HEAD`` on every ``GET`` route (``HeadAsGet``).

HTTP says a server that answers ``GET`` on a resource answers ``HEAD`` on it too, with the same
status and headers and no body (RFC 9110, section 9.3.2); uptime monitors and load balancers
probe with it. Starlette's own routes do so, FastAPI's do not (fastapi/fastapi#1773): ``HEAD
/healthz`` was 405. Adding ``HEAD`` to the routes' methods would put a second operation of each
into the OpenAPI document, so this middleware hands a ``HEAD`` of a path that some route answers
by ``GET`` to the app as that ``GET``, and drops the body it answers (uvicorn would too; the test
client would not). ``HEAD`` of a path without ``GET`` (``/classify``) stays 405, saying ``HEAD``.
The access log sees the request as it came, ``HEAD``.
"""

from __future__ import annotations

from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class HeadAsGet:
    """Answers ``HEAD`` of a ``GET`` route as that ``GET``, without its body."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD" or not _answers_get(scope):
            await self.app(scope, receive, send)
            return

        async def headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        # In place, not a copy: the layers outside read what routing writes into the scope.
        scope["method"] = "GET"
        try:
            await self.app(scope, receive, headers_only)
        finally:
            scope["method"] = "HEAD"


def _answers_get(scope: Scope) -> bool:
    # Matched as the router will (FastAPI keeps included routers as routes of their own), on a
    # copy: matching returns what it would write into the scope rather than writing it.
    as_get = {**scope, "method": "GET"}
    return any(route.matches(as_get)[0] is Match.FULL for route in scope["app"].router.routes)
