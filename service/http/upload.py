"""Reading the uploaded image: multipart field ``image`` or the raw body, with the byte limit
enforced from Content-Length first and then while streaming. A multipart body holds the one
field ``image``; any other field is refused, since parameters are read from the query string.

A body or part typed ``image/*``, ``application/octet-stream`` or nothing is read: the decoder
tells the format from the bytes, and a generic type is what most HTTP clients send for bytes
(``requests.post(url, data=...)`` and ``fetch`` of an untyped blob send none). Any other type
(``text/plain``, ``application/json``, a form) is 415."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator

from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

from model_store.scales import quoted
from service.core.errors import BadRequest, InvalidParameter, PayloadTooLarge, UnsupportedMediaType

FIELD = "image"
_GENERIC_TYPES = ("", "application/octet-stream")


async def read_image_bytes(request: Request, max_bytes: int) -> bytes:
    """The image's bytes from a request to /classify; raises 413, 415, 400 or 422."""
    media_type = _media_type(request.headers.get("content-type"))
    raw = _is_image_type(media_type)
    if not (raw or media_type == "multipart/form-data"):
        raise UnsupportedMediaType(
            f"Content-Type {media_type} is not accepted: send the image as the multipart/form-data "
            f"field {FIELD!r}, or as the body typed image/* or application/octet-stream"
        )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(max_bytes)
    stream = _limited(request.stream(), max_bytes)
    try:
        if raw:
            return b"".join([chunk async for chunk in stream])
        return await _multipart_image(request, stream)
    except ClientDisconnect:
        raise BadRequest("the client disconnected before the upload was complete") from None


async def _multipart_image(request: Request, stream: AsyncGenerator[bytes, None]) -> bytes:
    parser = MultiPartParser(request.headers, stream, max_files=4, max_fields=32)
    try:
        form = await parser.parse()
    except MultiPartException as err:
        raise BadRequest(f"malformed multipart body: {err.message}") from None
    try:
        parts = form.getlist(FIELD)
        if len(parts) > 1:
            raise InvalidParameter(f"the multipart field {FIELD!r}: given {len(parts)} times")
        if not parts:
            raise InvalidParameter(f"the multipart body has no field {FIELD!r}")
        part = parts[0]
        if not isinstance(part, UploadFile):
            raise InvalidParameter(f"the multipart field {FIELD!r} must be a file")
        part_type = _media_type(part.content_type)
        if not _is_image_type(part_type):
            raise UnsupportedMediaType(
                f"the multipart field {FIELD!r} has Content-Type {part_type}; send an image"
            )
        extra = [name for name in form if name != FIELD]
        if extra:
            # A parameter sent as a form field would be silently ignored (they are read from the
            # query string only, docs/serving.md): the answer would not be what was asked for.
            raise InvalidParameter(
                f"the multipart field {quoted(extra[0])} is not read: the body holds only "
                f"{FIELD!r}; give parameters in the query string"
            )
        return await part.read()
    finally:
        await form.close()


def _is_image_type(media_type: str) -> bool:
    return media_type.startswith("image/") or media_type in _GENERIC_TYPES


async def _limited(chunks: AsyncIterator[bytes], max_bytes: int) -> AsyncGenerator[bytes, None]:
    received = 0
    async for chunk in chunks:
        received += len(chunk)
        if received > max_bytes:
            raise _too_large(max_bytes)
        yield chunk


def _too_large(max_bytes: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"the request body exceeds the limit of {max_bytes} bytes")


def _media_type(header: str | None) -> str:
    return (header or "").split(";", 1)[0].strip().lower()
