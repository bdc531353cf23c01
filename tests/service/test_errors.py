"""Every error code through the real app: JSON ``{"error": {"code", "message"}}``, never a 500 or
a stack trace for bad input."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from model_store import ModelStore
from service.core import protocol
from service.core.gate import WorkGate
from service.core.registry import Registry
from service.http.app import create_app
from service.http.params import ClassifyParams, FeaturesParams, LocalizeParams
from tests.model_store.test_imaging import with_png_size
from tests.service.helpers import TestClient, encode, sample_image, settings_for

if TYPE_CHECKING:
    from httpx import Response


def assert_error(response: Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code
    assert body["error"]["message"] and "Traceback" not in response.text
    return body["error"]


def post_raw(client: TestClient, data: bytes, content_type: str = "image/png", **params):
    return client.post(
        "/classify", params=params, content=data, headers={"content-type": content_type}
    )


def test_400_undecodable(client: TestClient, png: bytes) -> None:
    assert_error(post_raw(client, b"definitely not a picture"), 400, "undecodable_image")
    assert_error(post_raw(client, png[:200]), 400, "undecodable_image")
    assert_error(post_raw(client, b""), 400, "undecodable_image")
    jpeg = encode(sample_image(), "JPEG")
    assert_error(post_raw(client, jpeg[: len(jpeg) // 2], "image/jpeg"), 400, "undecodable_image")


def test_400_malformed_multipart(client: TestClient) -> None:
    no_boundary = post_raw(client, b"--x\r\nnonsense", "multipart/form-data")
    assert "malformed multipart" in assert_error(no_boundary, 400, "bad_request")["message"]


def test_404_unknown_model_and_route(client: TestClient, png: bytes) -> None:
    error = assert_error(post_raw(client, png, model="vgg99"), 404, "unknown_model")
    assert "vgg99" in error["message"] and "tiny-d" in error["message"]
    assert_error(post_raw(client, png, model="tiny-d,vgg99"), 404, "unknown_model")
    assert_error(client.get("/nowhere"), 404, "not_found")
    assert_error(client.get("/classify"), 405, "method_not_allowed")


def test_413_content_length_over_the_limit(make_client: Callable, png: bytes) -> None:
    client = make_client(max_upload_bytes=len(png) - 1)
    error = assert_error(post_raw(client, png), 413, "payload_too_large")
    assert str(len(png) - 1) in error["message"]
    multipart = client.post("/classify", files={"image": ("a.png", png, "image/png")})
    assert_error(multipart, 413, "payload_too_large")


def test_413_streamed_body_without_content_length(make_client: Callable, png: bytes) -> None:
    client = make_client(max_upload_bytes=len(png) - 1)

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(png), 1000):
            yield png[i : i + 1000]

    response = client.post("/classify", content=chunks(), headers={"content-type": "image/png"})
    assert "content-length" not in response.request.headers
    assert_error(response, 413, "payload_too_large")
    ok = make_client(max_upload_bytes=len(png)).post(
        "/classify", content=chunks(), headers={"content-type": "image/png"}
    )
    assert ok.status_code == 200


def test_413_before_the_body_is_read(registry: Registry) -> None:
    """A declared Content-Length over the limit is refused without reading a byte."""
    app = create_app(
        settings_for(registry.settings.model_store, max_upload_bytes=1000), registry=registry
    )
    read: list[object] = []
    sent: list[dict] = []

    async def receive() -> dict:
        read.append(True)
        return {"type": "http.request", "body": b"x" * 2000, "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    async def call() -> None:
        app.state.service.gate = WorkGate(1, 1, 1.0, 10.0)
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/classify",
            "raw_path": b"/classify",
            "query_string": b"",
            "root_path": "",
            "headers": [(b"content-type", b"image/png"), (b"content-length", b"5000000")],
            "client": ("127.0.0.1", 1),
            "server": ("testserver", 80),
        }
        await app(scope, receive, send)

    asyncio.run(call())
    assert sent[0]["status"] == 413
    assert read == []


def test_413_too_many_pixels(make_client: Callable) -> None:
    png = encode(sample_image(400, 300))
    client = make_client(max_image_pixels=100_000)
    error = assert_error(post_raw(client, png), 413, "image_too_large")
    assert "120000 pixels" in error["message"]
    bomb = with_png_size(encode(sample_image(100, 80)), 50_000, 50_000)
    assert_error(post_raw(client, bomb), 413, "image_too_large")


def test_415_not_an_image_type(client: TestClient, png: bytes) -> None:
    error = assert_error(post_raw(client, png, "text/plain"), 415, "unsupported_media_type")
    assert error["message"] == (
        "Content-Type text/plain is not accepted: send the image as the multipart/form-data "
        "field 'image', or as the body typed image/* or application/octet-stream"
    )
    assert_error(post_raw(client, png, "application/json"), 415, "unsupported_media_type")
    form = post_raw(client, png, "application/x-www-form-urlencoded")  # curl --data-binary
    assert_error(form, 415, "unsupported_media_type")
    text_part = client.post("/classify", files={"image": ("a.txt", b"hello", "text/plain")})
    assert_error(text_part, 415, "unsupported_media_type")


def test_a_raw_body_of_a_generic_type_is_sniffed(client: TestClient, png: bytes) -> None:
    """Bytes sent untyped (requests' data=, an untyped fetch blob) or as octet-stream are read
    as the multipart part of such a type is: the decoder tells the format."""
    typed = post_raw(client, png, "image/png", scales="224").json()
    untyped = client.post("/classify", params={"scales": "224"}, content=png)
    assert "content-type" not in untyped.request.headers
    assert untyped.status_code == 200 and untyped.json()["predictions"] == typed["predictions"]
    as_bytes = post_raw(client, png, "application/octet-stream", scales="224")
    assert as_bytes.status_code == 200 and as_bytes.json()["predictions"] == typed["predictions"]
    text = post_raw(client, b"hello", "application/octet-stream")
    assert_error(text, 400, "undecodable_image")


def test_multipart_part_without_a_specific_type_is_sniffed(client: TestClient, png: bytes) -> None:
    response = client.post(
        "/classify",
        params={"scales": "224"},
        files={"image": ("blob", png, "application/octet-stream")},
    )
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"scales": "100"}, "scales"),
        ({"scales": "2000"}, "scales"),
        ({"scales": "256,abc"}, "scales"),
        ({"scales": ""}, "scales"),
        ({"scales": "256,256"}, "scales"),
        ({"scales": ",".join(str(q) for q in range(224, 300, 8))}, "scales"),
        ({"flip": "perhaps"}, "flip"),
        ({"method": "tencrop"}, "method"),
        ({"top_k": "0"}, "top_k"),
        ({"top_k": "6"}, "top_k"),
        ({"top_k": "three"}, "top_k"),
        ({"model": "tiny-d,tiny-d"}, "model"),
        ({"model": "tiny-d,tiny-de"}, "model"),
        ({"model": "tiny-d,"}, "model"),
    ],
)
def test_422_bad_parameters(client: TestClient, png: bytes, params: dict, field: str) -> None:
    error = assert_error(post_raw(client, png, **params), 422, "invalid_parameter")
    assert field in error["message"]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"method": "tencrop"}, "method: 'tencrop' is not one of dense, multicrop, combined"),
        ({"flip": "perhaps"}, "flip: 'perhaps' is not true or false"),
        ({"top_k": "three"}, "top_k: 'three' is not an integer"),
        ({"top_k": "0"}, "top_k: 0 out of range; it must be at least 1"),
        (
            {"method": "x", "flip": "maybe"},
            "flip: 'maybe' is not true or false; method: 'x' is not one of dense, multicrop, "
            "combined",
        ),
    ],
)
def test_422_framework_checks_speak_as_the_service(
    client: TestClient, png: bytes, params: dict, message: str
) -> None:
    """The parameters FastAPI validates are refused in the words of the service's own checks
    (``scales: [100] out of range; ...``), not pydantic's (``query.method: Input should be``)."""
    error = assert_error(post_raw(client, png, **params), 422, "invalid_parameter")
    assert error["message"] == message


def test_404_and_405_say_what_was_asked(client: TestClient) -> None:
    error = assert_error(client.get("/nowhere"), 404, "not_found")
    assert error["message"] == "no route at '/nowhere'; the routes are listed at /docs"
    response = client.get("/classify")
    error = assert_error(response, 405, "method_not_allowed")
    assert error["message"] == "GET is not a method of '/classify'; it takes POST"
    assert response.headers["allow"] == "POST"


def test_422_multipart_without_the_image_field(client: TestClient, png: bytes) -> None:
    response = client.post("/classify", files={"picture": ("a.png", png, "image/png")})
    assert "'image'" in assert_error(response, 422, "invalid_parameter")["message"]
    as_text = client.post("/classify", data={"image": "not a file"}, files={"x": ("x", b"1")})
    assert "must be a file" in assert_error(as_text, 422, "invalid_parameter")["message"]


def test_422_a_parameter_the_endpoint_does_not_take(client: TestClient, png: bytes) -> None:
    """A misspelt parameter would otherwise answer with the defaults, as if it had been read."""
    error = assert_error(post_raw(client, png, scalez="512"), 422, "invalid_parameter")
    assert error["message"] == (
        "unknown query parameter 'scalez'; this endpoint takes model, scales, flip, method, "
        "top_k, maps"
    )
    as_field = client.post("/classify", data={"scales": "512"}, files={"image": ("a.png", png)})
    error = assert_error(as_field, 422, "invalid_parameter")
    assert error["message"] == (
        "the multipart field 'scales' is not read: the body holds only 'image'; give parameters "
        "in the query string"
    )
    twice = client.post("/classify", files=[("image", ("a.png", png)), ("image", ("b.png", png))])
    error = assert_error(twice, 422, "invalid_parameter")
    assert error["message"] == "the multipart field 'image': given 2 times"
    assert client.post("/classify", files={"image": ("a.png", png)}).status_code == 200


@pytest.mark.parametrize(
    ("path", "params"),
    [("/classify", ClassifyParams), ("/features", FeaturesParams), ("/localize", LocalizeParams)],
)
def test_the_names_taken_are_those_the_openapi_document_lists(
    client: TestClient, path: str, params: type
) -> None:
    """check_names reads the dataclass; FastAPI documents the dependency's arguments."""
    operation = client.get("/openapi.json").json()["paths"][path]["post"]
    documented = [p["name"] for p in operation["parameters"] if p["in"] == "query"]
    assert documented == [field.name for field in fields(params)]


def test_422_image_shape(client: TestClient) -> None:
    tiny = encode(sample_image(10, 40))
    assert_error(post_raw(client, tiny), 422, "unsupported_image_shape")
    strip = encode(sample_image(1400, 200))
    assert_error(post_raw(client, strip), 422, "unsupported_image_shape")


def test_503_not_ready_with_retry_after(service_store: ModelStore, png: bytes) -> None:
    registry = Registry(settings_for(service_store.root, warmup=False, background_load=True))
    release = threading.Event()
    real_load = registry.load

    def slow_load() -> None:
        release.wait(30)
        real_load()

    registry.load = slow_load  # type: ignore[method-assign]
    with TestClient(create_app(registry.settings, registry=registry)) as client:
        assert client.get("/healthz").status_code == 200
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.headers["retry-after"] == "1"
        body = ready.json()
        assert body["ready"] is False and body["state"] == "loading"
        assert body["error"]["code"] == "not_ready"
        response = post_raw(client, png)
        assert_error(response, 503, "not_ready")
        assert response.headers["retry-after"] == "1"
        release.set()
        for _ in range(300):
            if client.get("/readyz").status_code == 200:
                break
            time.sleep(0.05)
        assert post_raw(client, png, scales="224").status_code == 200


def test_503_when_nothing_could_be_loaded(tmp_path: Path, png: bytes) -> None:
    registry = Registry(settings_for(tmp_path))
    registry.load()
    with TestClient(create_app(registry.settings, registry=registry)) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["state"] == "failed"
        assert "no loadable model" in ready.json()["problem"]
        assert_error(post_raw(client, png), 503, "not_ready")


def test_unexpected_failure_is_a_bare_500(
    registry: Registry, png: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(protocol, "classify", broken)
    app = create_app(registry.settings, registry=registry)
    with TestClient(app, raise_server_exceptions=False) as client:
        response = post_raw(client, png)
        traced = client.post(
            "/classify", content=png, headers={"content-type": "image/png", "x-request-id": "r-7"}
        )
    error = assert_error(response, 500, "internal_error")
    assert "secret" not in error["message"]
    # Answered from outside the access log's middleware, still with the request's ID.
    assert len(response.headers["x-request-id"]) == 32
    assert traced.status_code == 500 and traced.headers["x-request-id"] == "r-7"
