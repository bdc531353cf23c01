"""Awkward and hostile uploads and parameters through the whole app, in both upload forms: every
one gets 200 or its documented 4xx with the JSON error shape, within ``LATENCY_BOUND`` seconds,
never a 5xx; the service is healthy afterwards.

The bound is generous for the 2-core machines that run the suite (the slowest corpus entry,
a 6:1 image, takes about 0.1 s on tiny models); bombs must be refused from the header, in
``BOMB_BOUND``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
import pytest
from PIL import Image

from model_store.imaging import decode
from tests.service.helpers import encode, sample_image
from tests.service.reliability.corpus import ERROR_CODES, Upload, corpus

if TYPE_CHECKING:
    from httpx import Response

    from tests.service.helpers import TestClient

LATENCY_BOUND = 2.0
BOMB_BOUND = 0.5
CORPUS = corpus()
FORMS = ("raw", "multipart")


def send(client: TestClient, upload: Upload, form: str, **params: object) -> Response:
    params = {"scales": "224", **params}
    if form == "raw":
        return client.post(
            "/classify",
            params=params,
            content=upload.data,
            headers={"content-type": upload.content_type},
        )
    files = {"image": ("upload", upload.data, upload.content_type)}
    return client.post("/classify", params=params, files=files)


def check_answer(response: Response, statuses: frozenset[int], codes: frozenset[str]) -> None:
    """200 with a classification, or an allowed 4xx with exactly the JSON error shape."""
    assert response.status_code < 500, response.text
    assert response.status_code in statuses, (response.status_code, response.text[:300])
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    if response.status_code == 200:
        assert body["predictions"] and body["image"]["width"] > 0
        return
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    code = body["error"]["code"]
    assert code in (codes or ERROR_CODES[response.status_code]), body
    assert body["error"]["message"] and "Traceback" not in response.text


def test_corpus_size() -> None:
    assert len(CORPUS) >= 150
    assert len({u.name for u in CORPUS}) == len(CORPUS)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("upload", CORPUS, ids=[u.name for u in CORPUS])
def test_corpus(client: TestClient, upload: Upload, form: str) -> None:
    started = time.perf_counter()
    response = send(client, upload, form)
    elapsed = time.perf_counter() - started
    check_answer(response, upload.statuses, upload.codes)
    bound = BOMB_BOUND if upload.name.startswith("bomb-") else LATENCY_BOUND
    assert elapsed < bound, f"{upload.name}: {elapsed:.2f} s"


def test_bomb_messages_state_the_configured_limit(client: TestClient) -> None:
    """Pillow's own check (at twice its limit) used to be quoted with Pillow's number."""
    bombs = [u for u in CORPUS if u.name.startswith("bomb-") and u.statuses == {413}]
    for upload in bombs:
        message = send(client, upload, "raw").json()["error"]["message"]
        assert message.endswith("the limit is 40000000"), (upload.name, message)


def test_healthy_after_the_corpus(client: TestClient, png: bytes) -> None:
    for upload in CORPUS[::7]:
        send(client, upload, "raw")
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200
    ok = client.post("/classify", content=png, headers={"content-type": "image/png"})
    assert ok.status_code == 200, ok.text
    metrics = client.get("/metrics").text
    assert "verydeep_classify_in_flight 0.0" in metrics
    assert "verydeep_classify_admitted 0.0" in metrics


# EXIF orientation: what ImageOps.exif_transpose does for each value, and its inverse, which makes
# the stored pixels of an upright image.
EXIF_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
STORED = {
    **EXIF_TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    8: Image.Transpose.ROTATE_270,
}


def stored_with_orientation(upright: Image.Image, orientation: int, fmt: str) -> bytes:
    stored = upright if orientation == 1 else upright.transpose(STORED[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    params: dict[str, object] = {"exif": exif.tobytes()}
    if fmt == "WEBP":
        params["lossless"] = True
    if fmt == "JPEG":
        params["quality"] = 95
    return encode(stored, fmt, **params)


def posterior(body: dict) -> np.ndarray:
    out = np.zeros(5)
    for p in body["predictions"]:
        out[p["index"]] = p["probability"]
    return out


def raw_classify(client: TestClient, data: bytes, content_type: str, **params: object) -> dict:
    response = client.post(
        "/classify",
        params={"top_k": 5, **params},
        content=data,
        headers={"content-type": content_type},
    )
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "TIFF"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_lossless(client: TestClient, orientation: int, fmt: str) -> None:
    """Reported size and classification equal those of the pre-rotated image."""
    upright = sample_image(300, 260, seed=3)
    expected = raw_classify(client, encode(upright, "PNG"), "image/png", scales="224,256")
    data = stored_with_orientation(upright, orientation, fmt)
    body = raw_classify(client, data, f"image/{fmt.lower()}", scales="224,256")
    assert body["image"] == {"width": 300, "height": 260}
    np.testing.assert_allclose(posterior(body), posterior(expected), rtol=0, atol=1e-12)


@pytest.mark.parametrize("draft", [False, True])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_jpeg(make_client, orientation: int, draft: bool) -> None:
    """A JPEG's stored pixels, rotated by hand, give the same answer as the JPEG with its EXIF
    orientation; in draft mode (a 1200x1000 photo at Q=224 decodes at 1/4) as well."""
    client = make_client(jpeg_draft=draft)
    upright = sample_image(1200, 1000, seed=4) if draft else sample_image(300, 260, seed=4)
    data = stored_with_orientation(upright, orientation, "JPEG")
    body = raw_classify(client, data, "image/jpeg", scales="224")
    assert body["image"] == {"width": upright.width, "height": upright.height}

    pixels = decode(encode_without_exif(data), max_scale=224 if draft else None).image
    if orientation != 1:
        pixels = pixels.transpose(EXIF_TRANSPOSE[orientation])
    expected = raw_classify(client, encode(pixels, "PNG"), "image/png", scales="224")
    np.testing.assert_allclose(posterior(body), posterior(expected), rtol=0, atol=1e-12)


def encode_without_exif(jpeg: bytes) -> bytes:
    """The same JPEG bytes with the APP1 (EXIF) segment cut out: identical pixels."""
    at = jpeg.index(b"\xff\xe1")
    length = int.from_bytes(jpeg[at + 2 : at + 4], "big")
    return jpeg[:at] + jpeg[at + 2 + length :]


def test_exif_orientation_garbage_values(client: TestClient) -> None:
    """Orientation 0, 9, 65535 and a malformed EXIF block are ignored, not fatal."""
    upright = sample_image(300, 260, seed=5)
    for value in (0, 9, 65535):
        exif = Image.Exif()
        exif[0x0112] = value
        body = raw_classify(client, encode(upright, "PNG", exif=exif.tobytes()), "image/png")
        assert body["image"] == {"width": 300, "height": 260}
    broken = encode(upright, "JPEG", exif=b"Exif\0\0MM\0*\0\0\0\x08\xff\xff" + bytes(20))
    body = raw_classify(client, broken, "image/jpeg")
    assert body["image"] == {"width": 300, "height": 260}


# Bad parameters of every kind, for each query parameter.
LONG = "x" * 4000
PARAMETERS: list[tuple[str, dict[str, str], int]] = [
    # model: unknown names, path traversal, NUL bytes, unicode, very long, empty lists
    ("model-unknown", {"model": "vgg99"}, 404),
    ("model-traversal", {"model": "../../etc/passwd"}, 404),
    ("model-traversal-encoded", {"model": "%2e%2e%2f%2e%2e%2fetc%2fpasswd"}, 404),
    ("model-traversal-dotdot", {"model": ".."}, 404),
    ("model-traversal-inside", {"model": "tiny-d/../tiny-e"}, 404),
    ("model-traversal-backslash", {"model": "..\\..\\windows\\win.ini"}, 404),
    ("model-absolute", {"model": "/etc/passwd"}, 404),
    ("model-absolute-store", {"model": "/tmp/store/tiny-d"}, 404),
    ("model-file-url", {"model": "file:///etc/passwd"}, 404),
    ("model-nul", {"model": "tiny-d\x00"}, 404),
    ("model-nul-inside", {"model": "tiny\x00-d"}, 404),
    ("model-newline", {"model": "tiny-d\n"}, 200),  # stripped: surrounding space is ignored
    ("model-unicode", {"model": "ｔｉｎｙ-d"}, 404),
    ("model-rtl", {"model": "\u202etiny-d"}, 404),
    ("model-emoji", {"model": "🐱"}, 404),
    ("model-long", {"model": "m" * 1000}, 404),
    ("model-very-long", {"model": LONG}, 422),
    ("model-list-traversal", {"model": "tiny-d,../tiny-e"}, 404),
    ("model-list-empty", {"model": ","}, 422),
    ("model-list-repeated", {"model": "tiny-d,tiny-d"}, 422),
    ("model-list-ensemble", {"model": "tiny-d,tiny-de"}, 422),
    ("model-manifest-path", {"model": "tiny-d/manifest.json"}, 404),
    ("model-hidden", {"model": ".tmp-tiny-d"}, 404),
    ("model-ensembles-file", {"model": "ensembles.json"}, 404),
    ("model-empty-is-default", {"model": ""}, 200),
    # scales
    ("scales-empty", {"scales": ""}, 422),
    ("scales-word", {"scales": "big"}, 422),
    ("scales-float", {"scales": "224.0"}, 422),
    ("scales-exponent", {"scales": "1e3"}, 422),
    ("scales-negative", {"scales": "-224"}, 422),
    ("scales-plus", {"scales": "+224"}, 422),
    ("scales-underscore", {"scales": "2_24"}, 422),
    ("scales-fullwidth", {"scales": "２２４"}, 422),
    ("scales-arabic-indic", {"scales": "٢٢٤"}, 422),
    ("scales-too-small", {"scales": "223"}, 422),
    ("scales-too-large", {"scales": "1025"}, 422),
    ("scales-huge", {"scales": "9" * 400}, 422),
    ("scales-too-many", {"scales": ",".join(str(q) for q in range(224, 300, 8))}, 422),
    ("scales-long-list", {"scales": ",".join(["224"] * 1000)}, 422),
    ("scales-repeated-value", {"scales": "224,224"}, 422),
    ("scales-nul", {"scales": "224\x00"}, 422),
    ("scales-spaces-ok", {"scales": " 224 , 256 "}, 200),
    # flip
    ("flip-empty", {"flip": ""}, 422),
    ("flip-word", {"flip": "perhaps"}, 422),
    ("flip-number", {"flip": "2"}, 422),
    ("flip-unicode", {"flip": "ｔｒｕｅ"}, 422),
    ("flip-long", {"flip": LONG}, 422),
    ("flip-nul", {"flip": "true\x00"}, 422),
    ("flip-yes-ok", {"flip": "yes"}, 200),
    ("flip-0-ok", {"flip": "0"}, 200),
    # method
    ("method-empty", {"method": ""}, 422),
    ("method-unknown", {"method": "tencrop"}, 422),
    ("method-case", {"method": "DENSE"}, 422),
    ("method-nul", {"method": "dense\x00"}, 422),
    ("method-long", {"method": LONG}, 422),
    ("method-unicode", {"method": "dénse"}, 422),
    # top_k
    ("top_k-empty", {"top_k": ""}, 422),
    ("top_k-zero", {"top_k": "0"}, 422),
    ("top_k-negative", {"top_k": "-1"}, 422),
    ("top_k-over-K", {"top_k": "6"}, 422),
    ("top_k-huge", {"top_k": "9" * 40}, 422),
    ("top_k-float", {"top_k": "1.0"}, 422),
    ("top_k-underscore", {"top_k": "2_0"}, 422),
    ("top_k-plus", {"top_k": "+3"}, 422),
    ("top_k-fullwidth", {"top_k": "３"}, 422),
    ("top_k-word", {"top_k": "three"}, 422),
    ("top_k-nul", {"top_k": "3\x00"}, 422),
    ("top_k-long", {"top_k": LONG}, 422),
    # a parameter the endpoint does not take is refused: a misspelt one would answer the defaults
    ("unknown-parameter", {"colour": "blue"}, 422),
    ("unknown-parameter-long", {LONG: "1"}, 422),
]
REPEATED = [
    ("model", "model=tiny-d&model=tiny-e"),
    ("scales", "scales=224&scales=256"),
    ("flip", "flip=true&flip=false"),
    ("method", "method=dense&method=multicrop"),
    ("top_k", "top_k=1&top_k=2"),
]


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize(
    ("params", "status"),
    [(params, status) for _, params, status in PARAMETERS],
    ids=[name for name, _, _ in PARAMETERS],
)
def test_bad_parameters(
    client: TestClient, png: bytes, params: dict[str, str], status: int, form: str
) -> None:
    upload = Upload("png", png, "image/png", frozenset({200}))
    query = {"scales": "224", **params}
    started = time.perf_counter()
    response = send(client, upload, form, **query)
    assert time.perf_counter() - started < LATENCY_BOUND
    check_answer(response, frozenset({status}), frozenset())
    if status != 200:
        message = response.json()["error"]["message"]
        assert len(message) < 600, "client input is quoted, not copied whole"
        assert LONG not in message


@pytest.mark.parametrize(("name", "query"), REPEATED, ids=[name for name, _ in REPEATED])
def test_repeated_parameters_are_refused(client: TestClient, png: bytes, name: str, query: str):
    response = client.post(
        f"/classify?scales=224&{query}" if name != "scales" else f"/classify?{query}",
        content=png,
        headers={"content-type": "image/png"},
    )
    check_answer(response, frozenset({422}), frozenset({"invalid_parameter"}))
    assert response.json()["error"]["message"].startswith(f"{name}: given 2 times")


def test_over_the_byte_limit_every_way(make_client, png: bytes) -> None:
    """Content-Length over the limit, a chunked body without one, and multipart."""
    client = make_client(max_upload_bytes=len(png) // 2)

    def chunks():
        for i in range(0, len(png), 4096):
            yield png[i : i + 4096]

    answers = {
        "content-length": client.post(
            "/classify", content=png, headers={"content-type": "image/png"}
        ),
        "chunked": client.post(
            "/classify", content=chunks(), headers={"content-type": "image/png"}
        ),
        "multipart": client.post("/classify", files={"image": ("a.png", png, "image/png")}),
    }
    for how, response in answers.items():
        check_answer(response, frozenset({413}), frozenset({"payload_too_large"}))
        assert response.headers["connection"] == "close", how


def test_too_large_for_device(make_client) -> None:
    """A request whose views would exceed VERYDEEP_MAX_BATCH_PIXELS is refused before any
    network runs, with 413 too_large_for_device; smaller requests on the same image pass."""
    wide = encode(sample_image(1200, 200), "PNG")
    client = make_client(max_batch_pixels=2 * 1024 * 6144 - 1)
    refused = client.post(
        "/classify",
        params={"scales": "1024"},
        content=wide,
        headers={"content-type": "image/png"},
    )
    check_answer(refused, frozenset({413}), frozenset({"too_large_for_device"}))
    message = refused.json()["error"]["message"]
    assert "2 x 1024 x 6144 = 12582912 pixels" in message and "MAX_BATCH_PIXELS" in message
    for params in ({"scales": "1024", "flip": "false"}, {"scales": "512"}):
        ok = client.post(
            "/classify", params=params, content=wide, headers={"content-type": "image/png"}
        )
        assert ok.status_code == 200, ok.text
    assert client.get("/readyz").status_code == 200


def test_default_batch_limit_passes_typical_photos_at_max_scale(make_client) -> None:
    """Defaults: Q = MAX_SCALE = 1024 with flip passes 4:3, 16:9 and 4:1 photos (dense and
    combined); only 6:1 strips at Q = 1024 are refused."""
    from service.core import protocol
    from service.settings import Settings

    limit = Settings.model_fields["max_batch_pixels"].default
    for width, height in ((4000, 3000), (1920, 1080), (4000, 1000), (3000, 4000)):
        for method in ("dense", "combined", "multicrop"):
            assert protocol.largest_batch((width, height), [1024], True, method).pixels <= limit
    assert protocol.largest_batch((6000, 1000), [1024], True, "dense").pixels > limit
