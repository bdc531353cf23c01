"""``/docs`` (Swagger UI) and ``/redoc`` (ReDoc) served by the service itself, with no CDN: their
scripts, style sheet and icon come from the static files of the pinned ``fastapi-offline``
package, under ``/docs/assets/``, so that the documentation works on hosts without internet
(docs/serving.md, "Other endpoints").

Every URL in the pages is relative (``openapi.json``, ``docs/assets/...``): behind a proxy that
serves the service under a path prefix they still point inside it. Swagger UI's online validator
badge, which would send the document's address to validator.swagger.io, is off. The pages and
their assets need the API key when ``VERYDEEP_API_KEY`` is set, as every route but the probes.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

PACKAGE = "fastapi_offline"
"""The installed package whose ``static/`` folder holds Swagger UI's and ReDoc's builds."""

ASSETS_PATH = "/docs/assets"
ASSET_FILES = ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon.png")

# Relative to the pages, which are at the top of the service (/docs, /redoc).
_ASSETS = ASSETS_PATH.lstrip("/")
_OPENAPI = "openapi.json"


def assets_directory() -> Path:
    """The folder of the documentation pages' assets; every one of ``ASSET_FILES`` is in it."""
    folder = Path(str(resources.files(PACKAGE) / "static"))
    missing = [name for name in ASSET_FILES if not (folder / name).is_file()]
    if missing:
        raise RuntimeError(f"{PACKAGE} has no {', '.join(missing)} in {folder}")
    return folder


def install_docs(app: FastAPI) -> None:
    """``/docs``, ``/redoc`` and their assets; the app must be made with ``docs_url=None`` and
    ``redoc_url=None`` (FastAPI's own pages load from a CDN)."""
    app.mount(ASSETS_PATH, StaticFiles(directory=assets_directory()), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=_OPENAPI,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{_ASSETS}/favicon.png",
            oauth2_redirect_url=None,
            swagger_ui_parameters={"validatorUrl": None},
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=_OPENAPI,
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{_ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{_ASSETS}/favicon.png",
            with_google_fonts=False,
        )
