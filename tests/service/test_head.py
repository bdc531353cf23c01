"""HEAD of every GET route answers as the GET does, without a body (RFC 9110, 9.3.2); HEAD of
a POST-only route stays a 405 that names HEAD; the OpenAPI document gains no HEAD operations."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from fastapi.testclient import TestClient

GET_PATHS = ["/", "/healthz", "/readyz", "/models", "/docs", "/redoc", "/openapi.json"]


@pytest.mark.parametrize("path", GET_PATHS)
def test_head_answers_as_get_without_a_body(client: TestClient, path: str) -> None:
    got = client.get(path)
    head = client.head(path)
    assert head.status_code == got.status_code == 200
    assert head.content == b""
    assert head.headers["content-type"] == got.headers["content-type"]
    assert head.headers["content-length"] == str(len(got.content))


def test_head_of_metrics_and_static_files(client: TestClient) -> None:
    metrics = client.head("/metrics")
    assert metrics.status_code == 200 and metrics.content == b""
    assert metrics.headers["content-type"].startswith("text/plain")
    script = client.head("/static/page.js")
    assert script.status_code == 200 and script.content == b""
    assert int(script.headers["content-length"]) == len(client.get("/static/page.js").content)


def test_head_is_counted_and_logged_as_head(client: TestClient) -> None:
    def count() -> float:
        line = '/healthz",status="200"}'
        text = client.get("/metrics").text
        return sum(float(x.rsplit(" ", 1)[1]) for x in text.splitlines() if line in x)

    before = count()
    assert client.head("/healthz").status_code == 200
    assert count() == before + 1


def test_head_of_a_post_route_stays_405(client: TestClient) -> None:
    response = client.head("/classify")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert response.content == b""
    unknown = client.head("/no-such-page")
    assert unknown.status_code == 404 and unknown.content == b""


def test_openapi_has_no_head_operations(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert {"get"} == set(paths["/healthz"]) and {"post"} == set(paths["/classify"])
    assert not any("head" in operations for operations in paths.values())
