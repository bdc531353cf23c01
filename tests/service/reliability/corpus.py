"""A corpus of awkward and hostile uploads, generated (nothing binary is committed).

Each ``Upload`` says what the service must answer: a set of allowed statuses and, for errors, the
allowed error codes. ``exact`` cases allow one outcome; corrupted files may decode (libjpeg fills a
damaged scan with grey, GIF stops at its last good frame) or not, but never give a 5xx.
"""

from __future__ import annotations

import io
import random
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, features

from model_store.imaging import supported_formats
from tests.service.helpers import encode, sample_image

OK = frozenset({200})
UNDECODABLE = frozenset({400})
TOO_LARGE = frozenset({413})
BAD_SHAPE = frozenset({422})
MAYBE = frozenset({200, 400})

ERROR_CODES = {
    400: {"undecodable_image", "bad_request"},
    404: {"unknown_model", "not_found"},
    413: {"image_too_large", "payload_too_large", "too_large_for_device"},
    415: {"unsupported_media_type"},
    422: {"unsupported_image_shape", "invalid_parameter"},
}


@dataclass(frozen=True)
class Upload:
    name: str
    data: bytes
    content_type: str
    statuses: frozenset[int]
    codes: frozenset[str] = field(default_factory=frozenset)

    def __repr__(self) -> str:  # short ids in pytest output
        return self.name


def _mime(fmt: str) -> str:
    return {
        "JPEG": "image/jpeg",
        "MPO": "image/jpeg",
        "PNG": "image/png",
        "GIF": "image/gif",
        "WEBP": "image/webp",
        "BMP": "image/bmp",
        "TIFF": "image/tiff",
        "PPM": "image/x-portable-pixmap",
        "AVIF": "image/avif",
    }[fmt]


def _save(image: Image.Image, fmt: str, **params: object) -> bytes:
    return encode(image, fmt, **params)


def _frames(n: int = 3) -> list[Image.Image]:
    return [sample_image(200, 180, seed=i) for i in range(n)]


def _animated(fmt: str, **params: object) -> bytes:
    first, *rest = _frames()
    buffer = io.BytesIO()
    first.save(buffer, fmt, save_all=True, append_images=rest, **params)
    return buffer.getvalue()


def formats() -> Iterator[Upload]:
    """Every common format and its variants: all decode to 200."""
    im = sample_image()
    cases: dict[str, tuple[str, bytes]] = {
        "jpeg-baseline": ("JPEG", _save(im, "JPEG", quality=90)),
        "jpeg-progressive": ("JPEG", _save(im, "JPEG", progressive=True, optimize=True)),
        "jpeg-444": ("JPEG", _save(im, "JPEG", subsampling=0)),
        "jpeg-restart-markers": ("JPEG", _save(im, "JPEG", restart_marker_blocks=4)),
        "jpeg-grey": ("JPEG", _save(im.convert("L"), "JPEG")),
        "jpeg-cmyk": ("JPEG", _save(im.convert("CMYK"), "JPEG")),
        "jpeg-ycbcr": ("JPEG", _save(im.convert("YCbCr"), "JPEG")),
        "mpo": ("MPO", _animated("MPO")),
        "png": ("PNG", _save(im, "PNG")),
        "png-interlaced": ("PNG", _save(im, "PNG", interlace=True)),
        "png-trailing-garbage": ("PNG", _save(im, "PNG") + b"\0garbage" * 100),
        "apng": ("PNG", _animated("PNG", duration=50, loop=0)),
        "gif": ("GIF", _save(im, "GIF")),
        "gif-animated": ("GIF", _animated("GIF", duration=50, loop=0)),
        "gif-interlaced": ("GIF", _save(im, "GIF", interlace=True)),
        "gifar": ("GIF", _save(im, "GIF") + _zip({"a.txt": b"a zip after a GIF"})),
        "webp-lossy": ("WEBP", _save(im, "WEBP", quality=80)),
        "webp-lossless": ("WEBP", _save(im, "WEBP", lossless=True)),
        "webp-animated": ("WEBP", _animated("WEBP", duration=50, loop=0)),
        "bmp": ("BMP", _save(im, "BMP")),
        "tiff-raw": ("TIFF", _save(im, "TIFF")),
        "tiff-deflate": ("TIFF", _save(im, "TIFF", compression="tiff_deflate")),
        "tiff-lzw": ("TIFF", _save(im, "TIFF", compression="tiff_lzw")),
        "tiff-jpeg": ("TIFF", _save(im, "TIFF", compression="jpeg")),
        "tiff-multipage": ("TIFF", _animated("TIFF")),
        "ppm": ("PPM", _save(im, "PPM")),
        "pgm": ("PPM", _save(im.convert("L"), "PPM")),
        "pbm": ("PPM", _save(im.convert("1"), "PPM")),
    }
    if "AVIF" in supported_formats() and features.check("avif"):
        cases["avif"] = ("AVIF", _save(im, "AVIF"))
    for name, (fmt, data) in cases.items():
        yield Upload(f"format-{name}", data, _mime(fmt), OK)


def _sixteen_bit(im: Image.Image) -> Image.Image:
    grey = np.asarray(im.convert("L"), dtype=np.uint16) * 257
    return Image.fromarray(grey)  # uint16: mode I;16


def modes() -> Iterator[Upload]:
    """Every Pillow mode, in the formats that store it: all decode to 200."""
    im = sample_image()
    palette = im.convert("P")
    palette.info["transparency"] = 0
    rgba = im.convert("RGBA")
    alpha = np.asarray(rgba).copy()
    alpha[:, : alpha.shape[1] // 3, 3] = 0  # a transparent band
    rgba = Image.fromarray(alpha, "RGBA")
    cases = {
        "RGBA-png": (rgba, "PNG"),
        "RGBA-webp": (rgba, "WEBP"),
        "RGBA-tiff": (rgba, "TIFF"),
        "P-transparency-png": (palette, "PNG"),
        "P-transparency-gif": (palette, "GIF"),
        "P-bmp": (im.convert("P"), "BMP"),
        "PA-tiff": (im.convert("PA"), "TIFF"),
        "I;16-png": (_sixteen_bit(im), "PNG"),
        "I;16-tiff": (_sixteen_bit(im), "TIFF"),
        "CMYK-jpeg": (im.convert("CMYK"), "JPEG"),
        "CMYK-tiff": (im.convert("CMYK"), "TIFF"),
        "1-png": (im.convert("1"), "PNG"),
        "1-tiff": (im.convert("1"), "TIFF"),
        "1-bmp": (im.convert("1"), "BMP"),
        "L-png": (im.convert("L"), "PNG"),
        "L-tiff": (im.convert("L"), "TIFF"),
        "LA-png": (im.convert("LA"), "PNG"),
        "LA-tiff": (im.convert("LA"), "TIFF"),
        "I-tiff": (im.convert("I"), "TIFF"),
        "F-tiff": (im.convert("F"), "TIFF"),
        "LAB-tiff": (im.convert("LAB"), "TIFF"),
        "RGB-16bit-png": (None, "PNG"),
    }
    for name, (mode_image, fmt) in cases.items():
        if mode_image is None:
            data = _png_rgb16(np.asarray(im).astype(np.uint16) * 257)
        else:
            data = _save(mode_image, fmt)
        yield Upload(f"mode-{name}", data, _mime(fmt), OK)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def _png_rgb16(pixels: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG (Pillow cannot write one; it reads it as RGB)."""
    height, width, _ = pixels.shape
    rows = pixels.astype(">u2").reshape(height, width * 6 // 2).view(np.uint8)
    raw = b"".join(b"\0" + row.tobytes() for row in rows.reshape(height, -1))
    ihdr = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(raw))
        + _png_chunk(b"IEND", b"")
    )


def shapes() -> Iterator[Upload]:
    """Tiny images and extreme aspect ratios (limits: side >= 16, ratio <= 6)."""
    cases = {
        "1x1": ((1, 1), BAD_SHAPE),
        "15x15": ((15, 15), BAD_SHAPE),
        "16x16": ((16, 16), OK),
        "16x96-ratio-6": ((16, 96), OK),
        "16x97-ratio-over-6": ((16, 97), BAD_SHAPE),
        "1200x200-ratio-6": ((1200, 200), OK),
        "1201x200-ratio-over-6": ((1201, 200), BAD_SHAPE),
        "10000x10": ((10000, 10), BAD_SHAPE),
        "1x10000": ((1, 10000), BAD_SHAPE),
    }
    for name, ((width, height), statuses) in cases.items():
        data = _save(Image.new("RGB", (width, height), (200, 30, 60)), "PNG")
        codes = frozenset({"unsupported_image_shape"}) if statuses == BAD_SHAPE else frozenset()
        yield Upload(f"shape-{name}", data, "image/png", statuses, codes)


def damaged() -> Iterator[Upload]:
    """Truncated files, flipped bytes, broken magic numbers."""
    im = sample_image()
    sources = {
        "jpeg": ("JPEG", _save(im, "JPEG")),
        "png": ("PNG", _save(im, "PNG")),
        "gif": ("GIF", _save(im, "GIF")),
        "webp": ("WEBP", _save(im, "WEBP")),
        "bmp": ("BMP", _save(im, "BMP")),
        "tiff": ("TIFF", _save(im, "TIFF", compression="tiff_deflate")),
    }
    rng = random.Random(8)
    for name, (fmt, data) in sources.items():
        mime = _mime(fmt)
        for fraction in (0.02, 0.1, 0.5, 0.9):
            cut = max(8, int(len(data) * fraction))
            yield Upload(f"truncated-{name}-{int(fraction * 100)}pct", data[:cut], mime, MAYBE)
        yield Upload(f"truncated-{name}-header-only", data[:24], mime, UNDECODABLE)
        for trial in range(3):
            flipped = bytearray(data)
            for _ in range(8):
                position = rng.randrange(32, len(flipped))
                flipped[position] ^= 1 << rng.randrange(8)
            yield Upload(f"bitflip-{name}-{trial}", bytes(flipped), mime, MAYBE)
        zeroed = bytearray(data)
        middle = len(zeroed) // 2
        zeroed[middle : middle + 512] = bytes(512)
        yield Upload(f"zeroed-block-{name}", bytes(zeroed), mime, MAYBE)
        yield Upload(f"bad-magic-{name}", b"\0\0\0\0" + data[4:], mime, UNDECODABLE)
    yield Upload("empty", b"", "image/png", UNDECODABLE, frozenset({"undecodable_image"}))
    yield Upload("one-byte", b"\xff", "image/jpeg", UNDECODABLE)
    yield Upload("jpeg-soi-only", b"\xff\xd8\xff", "image/jpeg", UNDECODABLE)
    yield Upload("png-signature-only", b"\x89PNG\r\n\x1a\n", "image/png", UNDECODABLE)
    yield Upload("random-bytes", rng.randbytes(5000), "image/png", UNDECODABLE)
    yield Upload("zeros", bytes(5000), "image/png", UNDECODABLE)


def _zip(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return buffer.getvalue()


NOT_IMAGES: dict[str, tuple[bytes, str]] = {
    "text": (b"just some text\n" * 20, "text/plain"),
    "svg": (
        b'<svg xmlns="http://www.w3.org/2000/svg" width="300" height="300">'
        b'<rect width="300" height="300" fill="red"/></svg>',
        "image/svg+xml",
    ),
    "svg-xxe": (
        b'<?xml version="1.0"?><!DOCTYPE svg [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
        b'<svg xmlns="http://www.w3.org/2000/svg"><text>&x;</text></svg>',
        "image/svg+xml",
    ),
    "pdf": (
        b"%PDF-1.4\n1 0 obj<</Type/Catalog>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF",
        "application/pdf",
    ),
    "html": (b"<!doctype html><html><body><img src=x onerror=alert(1)></body></html>", "text/html"),
    "zip": (b"", "application/zip"),
    "json": (b'{"image": "data:image/png;base64,AAAA"}', "application/json"),
    "gzip": (zlib.compress(b"x" * 10000), "application/gzip"),
    "elf": (b"\x7fELF\x02\x01\x01" + bytes(200), "application/x-executable"),
    "eps": (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 100 100\nshowpage\n", "image/x-eps"),
    "ico": (b"", "image/x-icon"),
}


def not_images() -> Iterator[Upload]:
    """Other kinds of file: 415 with their own Content-Type (unless it is image/*, then 400),
    400 when they claim to be an image or are sent as bytes (application/octet-stream)."""
    for name, (data, own_type) in NOT_IMAGES.items():
        if name == "zip":
            data = _zip({"cat.png": _save(sample_image(), "PNG")})
        if name == "ico":
            data = _save(sample_image(64, 64), "ICO")  # a real image, in a format not served
        own = UNDECODABLE if own_type.startswith("image/") else frozenset({415})
        yield Upload(f"not-image-{name}-own-type", data, own_type, own)
        yield Upload(f"not-image-{name}-as-png", data, "image/png", UNDECODABLE)
        yield Upload(f"not-image-{name}-as-bytes", data, "application/octet-stream", UNDECODABLE)


def with_png_size(png: bytes, width: int, height: int) -> bytes:
    ihdr = bytearray(png[12:29])
    ihdr[4:12] = struct.pack(">II", width, height)
    crc = struct.pack(">I", zlib.crc32(bytes(ihdr)) & 0xFFFFFFFF)
    return png[:12] + bytes(ihdr) + crc + png[33:]


def _gif_sizes(screen: tuple[int, int] | None, frame: tuple[int, int] | None) -> bytes:
    gif = bytearray(_save(sample_image(100, 80).convert("P"), "GIF"))
    if screen:
        gif[6:10] = struct.pack("<HH", *screen)
    if frame:
        table = 3 * 2 ** ((gif[10] & 7) + 1) if gif[10] & 0x80 else 0
        at = gif.index(b"\x2c", 13 + table)
        gif[at + 5 : at + 9] = struct.pack("<HH", *frame)
    return bytes(gif)


def _jpeg_size(width: int, height: int) -> bytes:
    jpeg = bytearray(_save(sample_image(100, 80), "JPEG"))
    at = jpeg.index(b"\xff\xc0")
    jpeg[at + 5 : at + 9] = struct.pack(">HH", height, width)
    return bytes(jpeg)


def _tiff_size(width: int, height: int) -> bytes:
    """An uncompressed TIFF header declaring ``width x height`` with one strip of real data."""
    entries = [
        (256, 4, 1, width),  # ImageWidth
        (257, 4, 1, height),  # ImageLength
        (258, 3, 1, 8),  # BitsPerSample
        (259, 3, 1, 1),  # Compression: none
        (262, 3, 1, 1),  # Photometric: black is zero
        (273, 4, 1, 8 + 2 + 12 * 8 + 4),  # StripOffsets
        (278, 4, 1, height),  # RowsPerStrip
        (279, 4, 1, 1000),  # StripByteCounts
    ]
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        packed = struct.pack("<H", value) + b"\0\0" if kind == 3 else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, kind, count) + packed
    ifd += struct.pack("<I", 0)
    return b"II*\0" + struct.pack("<I", 8) + ifd + bytes(1000)


def _bmp_size(width: int, height: int) -> bytes:
    header = struct.pack("<2sIHHI", b"BM", 54 + 1000, 0, 0, 54)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 1000, 2835, 2835, 0, 0)
    return header + info + bytes(1000)


def _webp_size(width: int, height: int) -> bytes:
    """A lossless WebP whose VP8L header declares ``width x height`` (at most 16384 each)."""
    webp = bytearray(_save(sample_image(100, 80), "WEBP", lossless=True))
    assert webp[12:16] == b"VP8L" and webp[20] == 0x2F
    bits = int.from_bytes(webp[21:25], "little") & ~((1 << 28) - 1)
    webp[21:25] = (bits | (width - 1) | (height - 1) << 14).to_bytes(4, "little")
    return bytes(webp)


def _zero_png(width: int, height: int) -> bytes:
    """A real, valid PNG of ``width x height`` black pixels: tiny compressed, huge decoded."""
    row = b"\0" + bytes(width // 8 + 1)
    compressor = zlib.compressobj(9)
    body = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", body)
        + _png_chunk(b"IEND", b"")
    )


def _png_with_chunk(kind: bytes, payload: bytes) -> bytes:
    png = _save(sample_image(), "PNG")
    return png[:33] + _png_chunk(kind, payload) + png[33:]


def bombs() -> Iterator[Upload]:
    """Decompression bombs: a header declares far more pixels than allowed (40 M by default).
    Refused with 413 from the header, before decoding."""
    png = _save(sample_image(100, 80), "PNG")
    cases: dict[str, bytes] = {
        "png-header-50000x50000": with_png_size(png, 50_000, 50_000),
        "png-header-2^31": with_png_size(png, 2**31 - 1, 2**31 - 1),
        "png-real-zeros-20000x20000": _zero_png(20_000, 20_000),
        "gif-screen-65535x65535": _gif_sizes((65535, 65535), None),
        "gif-frame-65535x65535": _gif_sizes(None, (65535, 65535)),
        "gif-frame-9000x6000": _gif_sizes(None, (9000, 6000)),
        "jpeg-sof-65500x65500": _jpeg_size(65500, 65500),
        "jpeg-sof-9000x6000": _jpeg_size(9000, 6000),
        "tiff-ifd-100000x100000": _tiff_size(100_000, 100_000),
        "bmp-header-50000x50000": _bmp_size(50_000, 50_000),
        "webp-vp8l-16384x16384": _webp_size(16384, 16384),
        "ppm-header-100000x100000": b"P6 100000 100000 255\n" + bytes(1000),
    }
    for name, data in cases.items():
        yield Upload(f"bomb-{name}", data, "image/png", TOO_LARGE, frozenset({"image_too_large"}))
    # Compressed metadata bombs: Pillow caps text chunks (MAX_TEXT_CHUNK); the image itself is
    # fine, so the answer is 200, or 400 if the chunk is refused. Either way, fast.
    text_bomb = b"comment\0\0" + zlib.compress(b"A" * 64 * 1024 * 1024, 9)
    yield Upload("bomb-png-ztxt-64MiB", _png_with_chunk(b"zTXt", text_bomb), "image/png", MAYBE)
    icc_bomb = b"icc\0\0" + zlib.compress(bytes(64 * 1024 * 1024), 9)
    yield Upload("bomb-png-iccp-64MiB", _png_with_chunk(b"iCCP", icc_bomb), "image/png", MAYBE)


def corpus() -> list[Upload]:
    """Every upload of the corpus, in a fixed order."""
    groups: list[Callable[[], Iterator[Upload]]] = [
        formats,
        modes,
        shapes,
        damaged,
        not_images,
        bombs,
    ]
    return [upload for group in groups for upload in group()]
