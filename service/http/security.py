"""Who may call the service: an optional API key, and CORS (closed unless origins are configured).

With ``VERYDEEP_API_KEY`` set, every request but ``/healthz`` and ``/readyz`` (probes carry no
secrets) and the web page (``/`` and its assets under ``/static/``: it holds no secret and asks
for the key, docs/serving.md, "The web page") must send ``Authorization: Bearer <key>`` or
``X-API-Key: <key>``; /docs, /openapi.json, /metrics and unknown paths included, so that nothing
about the service shows without the key. The key is compared in constant time
(``hmac.compare_digest``); when both headers are sent, both must hold the key. Anything else gets
401 with the JSON error shape and ``WWW-Authenticate: Bearer``.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from service.http.handlers import error_response

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/"})
"""Paths that never need the key: liveness and readiness probes, and the web page."""
OPEN_PREFIX = "/static/"
"""The web page's script and style sheet: open too, but no path with a ``..`` segment."""

API_KEY_HEADER = "X-API-Key"
UNAUTHORIZED_CODE = "unauthorized"


class ApiKeyMiddleware:
    """Refuses requests without the configured key (pure ASGI: the body is never read)."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        if not api_key:
            raise ValueError("an empty API key would let everyone in")
        self.app = app
        self._key = api_key.encode("utf-8")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_open(scope["path"]) or self.authorized(scope):
            await self.app(scope, receive, send)
            return
        response = error_response(
            401,
            UNAUTHORIZED_CODE,
            "missing or wrong API key: send 'Authorization: Bearer <key>' or "
            f"'{API_KEY_HEADER}: <key>'",
            headers={"WWW-Authenticate": 'Bearer realm="verydeep"'},
        )
        await response(scope, receive, send)

    def authorized(self, scope: Scope) -> bool:
        offered = []
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                scheme, _, token = value.strip().partition(b" ")
                if scheme.lower() == b"bearer":
                    offered.append(token.strip())
            elif name == b"x-api-key":
                offered.append(value.strip())
        # Every offered credential must be the key (a wrong one next to a right one is refused),
        # and each is compared in full, so the time taken tells nothing about the key.
        matches = [hmac.compare_digest(token, self._key) for token in offered]
        return bool(matches) and all(matches)


def is_open(path: str) -> bool:
    """Whether ``path`` needs no key: a probe, the page, or one of its assets."""
    if path in OPEN_PATHS:
        return True
    return path.startswith(OPEN_PREFIX) and ".." not in path.split("/")


def install_security(app: FastAPI, api_key: str | None, cors_origins: list[str]) -> None:
    """Add the API key check (inner) and CORS (outer, so that preflight requests, which carry
    no credentials, are answered by CORS and 401 responses still carry CORS headers)."""
    if api_key:
        app.add_middleware(ApiKeyMiddleware, api_key=api_key)
        app.openapi = _openapi_with_security(app)  # type: ignore[method-assign]
    if cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", API_KEY_HEADER, "Content-Type"],
            expose_headers=["Retry-After", "X-Request-ID"],
            allow_credentials=False,
            max_age=600,
        )


def _openapi_with_security(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """The OpenAPI document says which routes need the key and documents their 401."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
        )
        components = schema.setdefault("components", {})
        components["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer"},
            "apiKey": {"type": "apiKey", "in": "header", "name": API_KEY_HEADER},
        }
        schema["security"] = [{"bearer": []}, {"apiKey": []}]
        error_ref = {"$ref": "#/components/schemas/ErrorResponse"}
        for path, operations in schema.get("paths", {}).items():
            for operation in operations.values():
                if path in OPEN_PATHS:
                    operation["security"] = []
                    continue
                operation.setdefault("responses", {})["401"] = {
                    "description": "missing or wrong API key",
                    "content": {"application/json": {"schema": error_ref}},
                }
        app.openapi_schema = schema
        return schema

    return openapi
