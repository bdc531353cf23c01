"""The web page at ``GET /`` and its script and style sheet under ``/static/`` (docs/serving.md,
"The web page").

Plain HTML, CSS and JavaScript in ``service/http/static/``, shipped in the package: no build
step, nothing from a CDN. The page calls only the public API, at relative URLs (``models``,
``classify``, ``localize``), so that it works behind a path prefix. It holds no secret, so it
and its assets are open with ``VERYDEEP_API_KEY`` set (``service/http/security.py``); it asks for
the key when the API answers 401. Its Content-Security-Policy lets it load and call nothing but
the service.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC_PATH = "/static"
PAGE_FILE = "index.html"
ASSET_FILES = ("page.js", "page.css")

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        # The preview and the favicon: object URLs of the chosen file, and an empty data URL.
        "img-src 'self' blob: data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def static_directory() -> Path:
    """The folder of the page and its assets; every one of them is in it."""
    folder = Path(str(resources.files("service.http") / "static"))
    missing = [name for name in (PAGE_FILE, *ASSET_FILES) if not (folder / name).is_file()]
    if missing:
        raise RuntimeError(f"the web page's {', '.join(missing)} missing from {folder}")
    return folder


def install_page(app: FastAPI) -> None:
    """``GET /`` (the page, read once here) and ``/static/`` (its assets)."""
    folder = static_directory()
    html = (folder / PAGE_FILE).read_text(encoding="utf-8")
    router = APIRouter()

    @router.get("/", include_in_schema=False, response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        return HTMLResponse(html, headers=PAGE_HEADERS)

    app.include_router(router)
    app.mount(STATIC_PATH, StaticFiles(directory=folder), name="page-static")
