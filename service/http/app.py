"""The FastAPI application: ``create_app(settings)``.

The store loads in a background thread (unless ``background_load`` is off), so /healthz answers
at once while /readyz and /classify say 503 until every model is loaded and warmed up.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import metadata

from fastapi import FastAPI

from service.core.gate import WorkGate
from service.core.registry import Registry
from service.http.access_log import AccessLogMiddleware
from service.http.connections import CloseUnreadBodies
from service.http.docs_assets import install_docs
from service.http.handlers import install_error_handlers
from service.http.head import HeadAsGet
from service.http.metrics import Metrics
from service.http.page import install_page
from service.http.routes import ServiceState, router
from service.http.security import install_security
from service.settings import Settings

DESCRIPTION = """\
VGG ConvNets (Simonyan & Zisserman, ICLR 2015) served with the paper's test protocol: dense
evaluation of the fully-convolutional net over the whole image at several scales, flip averaging,
optional 5x5 multi-crop, and ensembles. Errors are `{"error": {"code", "message"}}`.
"""


def create_app(settings: Settings | None = None, *, registry: Registry | None = None) -> FastAPI:
    """The service for ``settings`` (default: from ``VERYDEEP_*`` variables). A ``registry``
    that is already loaded is served as it is; otherwise it loads when the app starts."""
    settings = settings or Settings()
    registry = registry or Registry(settings)
    metrics = Metrics()
    metrics.watch_network(lambda: registry.models)
    state = ServiceState(settings=settings, registry=registry, metrics=metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.background_load:
            registry.load_in_background()
        elif registry.state == "loading":
            await asyncio.to_thread(registry.load)
        state.gate = WorkGate(
            max_concurrency=settings.max_concurrency,
            max_queue=settings.max_queue,
            queue_timeout=settings.queue_timeout,
            request_timeout=settings.request_timeout,
            metrics=metrics,
        )
        try:
            yield
        finally:
            state.gate.shutdown()
            state.gate = None
            await asyncio.to_thread(registry.stop)

    # /docs and /redoc come from install_docs, with their assets served here rather than by a CDN.
    app = FastAPI(
        title="verydeep",
        version=_version(),
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.service = state
    install_error_handlers(app)
    api_key = settings.api_key.get_secret_value() if settings.api_key else None
    install_security(app, api_key, settings.cors_origins)
    # Around both: a refusal sent before the body was read closes the connection.
    app.add_middleware(CloseUnreadBodies)
    # HEAD of the GET routes, inside the access log so that it logs and counts HEAD.
    app.add_middleware(HeadAsGet)
    # Outermost: every request is logged and counted, refused ones (401, CORS) included.
    app.add_middleware(AccessLogMiddleware, metrics=metrics)
    app.include_router(router)
    install_docs(app)
    install_page(app)
    return app


def _version() -> str:
    try:
        return metadata.version("verydeep")
    except metadata.PackageNotFoundError:
        return "0+unknown"
