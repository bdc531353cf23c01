"""The web page at ``GET /`` (docs/serving.md, "The web page"): served by the app with every
asset it references, nothing from outside the service, relative URLs only (so that it works
behind a path prefix), and open without the API key while the API still needs it."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest

from service.core.registry import Registry
from service.http.app import create_app
from service.http.page import CONTENT_SECURITY_POLICY, static_directory
from service.http.security import is_open
from tests.service.helpers import ROOT, TestClient, settings_for

KEY = "page-test-key"
CONTENT_TYPES = {".css": "text/css", ".js": "text/javascript", ".html": "text/html"}
OUTSIDE = re.compile(r"https?:|(?<![:\w])//\w", re.IGNORECASE)
"""A URL with a scheme of the web, or a protocol-relative one (``//host``)."""


class References(HTMLParser):
    """Every URL-valued attribute of a page (``src``, ``href``, ``action``...) and the ids."""

    URL_ATTRIBUTES = {"src", "href", "action", "formaction", "poster", "data", "srcset"}

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[tuple[str, str, str]] = []  # (tag, attribute, value)
        self.ids: set[str] = set()
        self.inline_scripts = 0
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in self.URL_ATTRIBUTES and value is not None:
                self.urls.append((tag, name, value))
            if name == "id" and value:
                self.ids.add(value)
            if name == "style" or name.startswith("on"):
                raise AssertionError(f"inline {name} on <{tag}>: the page's CSP forbids it")
        self._in_script = tag == "script"

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline_scripts += 1

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False


@pytest.fixture(scope="module")
def page(client: TestClient) -> References:
    response = client.get("/")
    assert response.status_code == 200, response.text
    parser = References()
    parser.feed(response.text)
    return parser


def assets(page: References) -> list[str]:
    """What the page loads: its scripts and style sheets (not the links it shows, nor data:)."""
    loaded = [
        v for tag, attr, v in page.urls if (tag, attr) in {("script", "src"), ("link", "href")}
    ]
    return [url for url in loaded if not url.startswith("data:")]


def test_the_page_is_html_with_its_security_headers(client: TestClient) -> None:
    response = client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert "connect-src 'self'" in CONTENT_SECURITY_POLICY
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.text.lstrip().lower().startswith("<!doctype html>")
    assert "/" not in client.get("/openapi.json").json()["paths"]


def test_every_asset_is_served_with_its_content_type(client: TestClient, page: References) -> None:
    loaded = assets(page)
    assert sorted(loaded) == ["static/page.css", "static/page.js"]
    for url in loaded:
        response = client.get(f"/{url}")
        assert response.status_code == 200, url
        media_type = response.headers["content-type"].split(";")[0]
        assert media_type == CONTENT_TYPES[Path(url).suffix], (url, media_type)
        assert response.content == (static_directory() / Path(url).name).read_bytes()


def test_every_url_is_relative_and_nothing_comes_from_outside(
    client: TestClient, page: References
) -> None:
    assert page.inline_scripts == 0
    for tag, attr, url in page.urls:
        assert not OUTSIDE.search(url), (tag, attr, url)
        # Relative: no leading "/" (it would leave a path prefix), no scheme but data:.
        assert not url.startswith("/"), (tag, attr, url)
        assert url.startswith("data:") or ":" not in url, (tag, attr, url)
    texts = {"/": client.get("/").text} | {url: client.get(f"/{url}").text for url in assets(page)}
    for url, text in texts.items():
        assert not OUTSIDE.search(text), (url, OUTSIDE.search(text))
        assert "@import" not in text, url
        assert not re.search(r"url\(\s*['\"]?(?!data:)", text), url


def test_the_script_calls_the_api_at_relative_urls_and_knows_the_pages_ids(
    page: References,
) -> None:
    script = (static_directory() / "page.js").read_text()
    calls = re.findall(r"\bapi\(\s*[\"'`]([^\"'`?$]*)", script)
    assert sorted(set(calls)) == ["classify", "localize", "models"], calls
    assert "fetch(path" in script and script.count("fetch(") == 1
    # No string that starts with "/" (an absolute path) or "//" (another host).
    assert not re.search(r"[\"'`]/", script)
    used = set(re.findall(r"\$\(\"([\w-]+)\"\)", script))
    assert used and used <= page.ids, used - page.ids
    # Score maps only where the API gives them: never with multicrop.
    assert 'if (method !== "multicrop") params.set("maps", "top");' in script


@pytest.fixture(scope="module")
def keyed(registry: Registry) -> Iterator[TestClient]:
    settings = settings_for(registry.settings.model_store, api_key=KEY)
    with TestClient(create_app(settings, registry=registry)) as c:
        yield c


def test_the_page_and_its_assets_need_no_key_but_the_api_does(
    keyed: TestClient, page: References, png: bytes
) -> None:
    assert keyed.get("/").status_code == 200
    for url in assets(page):
        assert keyed.get(f"/{url}").status_code == 200, url
    assert keyed.get("/static/no-such-file.js").status_code == 404
    for response in (
        keyed.get("/models"),
        keyed.post("/classify", content=png, headers={"content-type": "image/png"}),
        keyed.post("/classify", files={"image": ("a.png", png, "image/png")}),
        keyed.get("/docs"),
        keyed.get("/static"),
    ):
        assert response.status_code == 401, response.request.url
        assert response.json()["error"]["code"] == "unauthorized"
    bearer = {"Authorization": f"Bearer {KEY}"}
    assert keyed.get("/models", headers=bearer).status_code == 200
    answer = keyed.post("/classify?maps=top", files={"image": ("a.png", png)}, headers=bearer)
    assert answer.status_code == 200 and answer.json()["maps"]


def test_only_the_page_and_the_static_folder_are_open() -> None:
    assert is_open("/") and is_open("/static/page.js") and is_open("/healthz")
    for path in (
        "/models",
        "/classify",
        "/static",
        "/static/../models",
        "/static/x/../../classify",
        "/staticx/page.js",
        "//",
        "/index.html",
    ):
        assert not is_open(path), path


def test_the_static_files_are_package_data() -> None:
    """A wheel (the Docker image installs one) carries every file of the page."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    patterns = setuptools["package-data"]["service.http"]
    folder = static_directory()
    assert folder == ROOT / "service" / "http" / "static"
    for path in folder.iterdir():
        relative = path.relative_to(folder.parent)
        assert any(relative.match(pattern) for pattern in patterns), relative
