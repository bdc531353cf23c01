"""Fuzzing: schemathesis against the service's own OpenAPI document (no 5xx, every response as the
document says), and hypothesis properties of the image intake (``imaging.decode`` and /classify
with random sizes, modes, formats and byte corruptions: only the documented errors come out).

Example counts are modest in the default run; ``-m slow`` runs the same properties longer.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Callable

import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image
from schemathesis.specs.openapi.checks import positive_data_acceptance

from model_store.imaging import DecodedImage, ImageError, ImageLimits, decode
from service.core.registry import Registry
from service.http.app import create_app
from tests.service.helpers import settings_for

FAST = settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
LONG = settings(FAST, max_examples=int(os.environ.get("VERYDEEP_FUZZ_EXAMPLES", "600")))
API_KEY = "fuzz-key-0123456789abcdef"

# Schema-valid bodies are any bytes, but only images classify: 400 and 422 for valid-looking
# requests are the design, so schemathesis' "valid data must be accepted" check does not apply.
EXCLUDED_CHECKS = [positive_data_acceptance]


def _schema(registry: Registry, **overrides: object) -> schemathesis.BaseSchema:
    settings_ = settings_for(registry.settings.model_store, default_model="tiny-d", **overrides)
    app = create_app(settings_, registry=registry)
    return schemathesis.openapi.from_asgi("/openapi.json", app, headers=_auth(overrides))


def _auth(overrides: dict[str, object]) -> dict[str, str]:
    return {"X-API-Key": API_KEY} if overrides.get("api_key") else {}


@pytest.fixture(scope="module")
def open_schema(registry: Registry) -> schemathesis.BaseSchema:
    return _schema(registry)


@pytest.fixture(scope="module")
def keyed_schema(registry: Registry) -> schemathesis.BaseSchema:
    return _schema(registry, api_key=API_KEY)


open_api = schemathesis.pytest.from_fixture("open_schema")
keyed_api = schemathesis.pytest.from_fixture("keyed_schema")


@open_api.parametrize()
@FAST
def test_schemathesis(case: schemathesis.Case) -> None:
    case.call_and_validate(excluded_checks=EXCLUDED_CHECKS)


@keyed_api.parametrize()
@settings(FAST, max_examples=15)
def test_schemathesis_with_api_key(case: schemathesis.Case) -> None:
    """With VERYDEEP_API_KEY set the document declares the key and the 401s, and the service
    answers as declared, with and without the key."""
    credentials = {"X-API-Key": API_KEY, "Authorization": f"Bearer {API_KEY}"}
    case.call_and_validate(headers=credentials, excluded_checks=EXCLUDED_CHECKS)
    refused = case.call(headers={"X-API-Key": "wrong"})
    if case.path in ("/healthz", "/readyz"):
        assert refused.status_code != 401
    else:
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "unauthorized"


@pytest.mark.slow
@open_api.parametrize()
@LONG
def test_schemathesis_long(case: schemathesis.Case) -> None:
    case.call_and_validate(excluded_checks=EXCLUDED_CHECKS)


# Image intake properties.
MODES = ["1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "I;16", "I", "F"]
FORMATS = ["PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF", "PPM"]


def _pixels(mode: str, width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    rgb = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, (height, width), dtype=np.uint16))
    if mode == "F":  # with NaN and infinities: a float TIFF may hold any bits
        values = rng.normal(128, 80, (height, width)).astype(np.float32)
        values.flat[rng.integers(0, values.size, 3)] = [np.nan, np.inf, -np.inf]
        return Image.fromarray(values)
    return rgb.convert(mode)


@st.composite
def encoded_images(draw: st.DrawFn) -> bytes:
    """A real image of random size, mode and format (combinations a format cannot store are
    drawn again)."""
    width = draw(st.integers(1, 96))
    height = draw(st.integers(1, 96))
    mode = draw(st.sampled_from(MODES))
    fmt = draw(st.sampled_from(FORMATS))
    if (mode, fmt) == ("YCbCr", "TIFF"):
        draw(st.nothing())  # Pillow writes YCbCr TIFFs that it cannot read back
    image = _pixels(mode, width, height, draw(st.integers(0, 2**16)))
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # Pillow 12: I mode as PNG
            image.save(buffer, fmt)
    except (OSError, ValueError, KeyError, TypeError):
        draw(st.nothing())  # this format cannot store this mode
    return buffer.getvalue()


@st.composite
def corrupted(draw: st.DrawFn, data: st.SearchStrategy[bytes]) -> bytes:
    """Bytes of ``data`` truncated, with flipped or overwritten bytes, with junk inserted."""
    out = bytearray(draw(data))
    for _ in range(draw(st.integers(0, 6))):
        if not out:
            break
        at = draw(st.integers(0, len(out) - 1))
        kind = draw(st.sampled_from(["flip", "set", "insert", "delete"]))
        if kind == "flip":
            out[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set":
            out[at] = draw(st.sampled_from([0, 0xFF, 0x7F, 0x80]))
        elif kind == "insert":
            out[at:at] = draw(st.binary(min_size=1, max_size=16))
        else:
            del out[at : at + draw(st.integers(1, 64))]
    if draw(st.booleans()):
        out = out[: draw(st.integers(0, len(out)))]
    return bytes(out)


limits_strategy = st.builds(
    ImageLimits,
    max_pixels=st.sampled_from([100, 2_000, 40_000_000]),
    min_side=st.integers(1, 20),
    max_aspect_ratio=st.sampled_from([1.0, 2.5, 6.0, 1000.0]),
)


def check_decode(data: bytes, limits: ImageLimits, max_scale: int | None) -> DecodedImage | None:
    """decode either returns an RGB image within the limits or raises an ImageError: never
    anything else."""
    try:
        decoded = decode(data, limits, max_scale=max_scale)
    except ImageError:
        return None
    assert decoded.image.mode == "RGB"
    width, height = decoded.width, decoded.height
    assert width * height <= limits.max_pixels
    assert min(width, height) >= limits.min_side
    assert max(width, height) / min(width, height) <= limits.max_aspect_ratio
    assert decoded.image.width >= 1 and decoded.image.height >= 1
    return decoded


# Numpy's RuntimeWarnings (invalid casts, overflows) in the intake are bugs: make them fail.
pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")


def _float_tiff_with_nan() -> bytes:
    """What the long run found: a float TIFF holding NaN cast to undefined bytes."""
    buffer = io.BytesIO()
    _pixels("F", 40, 30, seed=1).save(buffer, "TIFF")
    return buffer.getvalue()


@FAST
@given(data=encoded_images(), limits=limits_strategy, max_scale=st.none() | st.integers(224, 512))
@example(data=_float_tiff_with_nan(), limits=ImageLimits(), max_scale=None)
def test_decode_valid_images(data: bytes, limits: ImageLimits, max_scale: int | None) -> None:
    """A valid image within the default limits always decodes, to its own size."""
    decoded = check_decode(data, limits, max_scale)
    within_defaults = check_decode(data, ImageLimits(min_side=1, max_aspect_ratio=1000.0), None)
    assert within_defaults is not None
    with Image.open(io.BytesIO(data)) as im:
        assert (within_defaults.width, within_defaults.height) in (im.size, im.size[::-1])
    if decoded is not None and max_scale is None:
        assert decoded.image.size == (decoded.width, decoded.height)


@FAST
@given(
    data=corrupted(encoded_images()) | st.binary(max_size=2048),
    limits=limits_strategy,
    max_scale=st.none() | st.just(224),
)
def test_decode_corrupted_bytes(data: bytes, limits: ImageLimits, max_scale: int | None) -> None:
    check_decode(data, limits, max_scale)


@pytest.mark.slow
@LONG
@given(data=corrupted(encoded_images()), limits=limits_strategy, max_scale=st.none() | st.just(224))
def test_decode_corrupted_bytes_long(data: bytes, limits: ImageLimits, max_scale: int | None):
    check_decode(data, limits, max_scale)


CLASSIFY_STATUSES = {200, 400, 413, 422}


def _classify_property(client_factory: Callable) -> Callable:
    client = client_factory()

    def run(data: bytes, content_type: str) -> None:
        response = client.post(
            "/classify",
            params={"scales": "224"},
            content=data,
            headers={"content-type": content_type},
        )
        assert response.status_code in CLASSIFY_STATUSES, response.text
        body = response.json()
        if response.status_code != 200:
            assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}

    return run


CONTENT_TYPES = st.sampled_from(["image/png", "image/jpeg", "image/anything"])


def test_classify_random_uploads(make_client: Callable) -> None:
    run = _classify_property(make_client)

    @FAST
    @given(data=corrupted(encoded_images()) | encoded_images(), content_type=CONTENT_TYPES)
    def prop(data: bytes, content_type: str) -> None:
        run(data, content_type)

    prop()


@pytest.mark.slow
def test_classify_random_uploads_long(make_client: Callable) -> None:
    run = _classify_property(make_client)

    @LONG
    @given(data=corrupted(encoded_images()) | encoded_images(), content_type=CONTENT_TYPES)
    def prop(data: bytes, content_type: str) -> None:
        run(data, content_type)

    prop()
