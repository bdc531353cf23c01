"""/docs and /redoc work without internet: the pages name no outside URL, and every script, style
sheet, icon and document they load is served by the app itself, at a relative URL (so that a
proxy's path prefix keeps them inside the service)."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from service.http.docs_assets import ASSET_FILES, assets_directory
from tests.service.helpers import TestClient

REFERENCE = re.compile(r"""(?:src|href|spec-url)="([^"]*)"|\burl: '([^']*)'""")
CONTENT_TYPES = {".js": "javascript", ".css": "text/css", ".png": "image/png", ".json": "json"}


def references(html: str) -> list[str]:
    return [a or b for a, b in REFERENCE.findall(html)]


@pytest.mark.parametrize(
    ("page", "expected"),
    [
        ("/docs", {"swagger-ui-bundle.js", "swagger-ui.css", "favicon.png", "openapi.json"}),
        ("/redoc", {"redoc.standalone.js", "favicon.png", "openapi.json"}),
    ],
)
def test_docs_page_loads_everything_from_the_service(
    client: TestClient, page: str, expected: set[str]
) -> None:
    response = client.get(page)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    html = response.text
    # No outside URL of any kind: not http(s), not protocol-relative (//host/...).
    assert "http://" not in html and "https://" not in html and "//" not in html
    found = references(html)
    assert {ref.rsplit("/", 1)[-1] for ref in found} == expected, found
    for ref in found:
        assert not ref.startswith("/"), f"{ref}: relative, so that a path prefix is kept"
        asset = client.get("/" + ref)
        assert asset.status_code == 200, (ref, asset.text[:200])
        suffix = "." + ref.rsplit(".", 1)[-1]
        assert CONTENT_TYPES[suffix] in asset.headers["content-type"], ref
        assert len(asset.content) > 1000, ref


def test_swagger_ui_sends_nothing_to_its_online_validator(client: TestClient) -> None:
    """Swagger UI's default validator badge would load an image from validator.swagger.io."""
    assert '"validatorUrl": null' in client.get("/docs").text


def test_assets_are_the_installed_package_files(client: TestClient) -> None:
    folder = assets_directory()
    for name in ASSET_FILES:
        assert client.get(f"/docs/assets/{name}").content == (folder / name).read_bytes()
    assert client.get("/docs/assets/none.js").status_code == 404


def test_docs_and_their_assets_need_the_api_key(make_client: Callable) -> None:
    client = make_client(api_key="k3y-for-docs-tests")
    for path in ("/docs", "/redoc", "/docs/assets/swagger-ui-bundle.js", "/openapi.json"):
        assert client.get(path).status_code == 401, path
        keyed = client.get(path, headers={"X-API-Key": "k3y-for-docs-tests"})
        assert keyed.status_code == 200, path
