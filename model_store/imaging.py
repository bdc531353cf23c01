"""From image bytes to network input (docs/serving.md, "Classifying"), with Pillow and
numpy only: the one decoding of the service and of training.

``decode`` turns bytes into an RGB PIL image with its EXIF orientation applied, refusing
decompression bombs from the header alone. ``rescale`` is torchvision's ``Resize(Q)`` on a PIL
image, to the pixel: short side Q, long side ``int(Q * long / short)``, PIL bilinear (which
antialiases when it shrinks). ``to_input`` applies a manifest's preprocessing and returns CHW in
the network's input dtype (float32, or float16 for a float16 export). The offline evaluator calls
these same functions, and training decodes its images with ``load_rgb``, which is ``decode``.
"""

from __future__ import annotations

import contextlib
import functools
import io
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from model_store import Preprocessing

FORMATS = ("JPEG", "MPO", "PNG", "GIF", "WEBP", "BMP", "TIFF", "PPM", "AVIF")
"""Formats ``decode`` accepts. Pillow opens many more (EPS would run Ghostscript); these are the
ones cameras, browsers and datasets produce."""

BACKGROUND = (255, 255, 255)
"""Transparent pixels are composited over white, as a browser shows them on a plain page."""

_ORIENTATION_TAG = 0x0112
_SWAPPING_ORIENTATIONS = {5, 6, 7, 8}
_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N"}
_DECLARED_PIXELS = re.compile(r"\((\d+) pixels\)")


class ImageError(ValueError):
    """The image cannot be used; subclasses say why. Like the service's own refusals, each
    carries the HTTP ``status`` and ``code`` a client is answered with (docs/serving.md,
    "Errors")."""

    status = 400
    code = "undecodable_image"
    retryable = False


class UndecodableImage(ImageError):
    """Not an image in a supported format, or a corrupt or truncated one."""


class ImageTooLarge(ImageError):
    """More pixels than allowed, as the header declares them."""

    status, code = 413, "image_too_large"


class ImageShapeError(ImageError):
    """Too small, or too elongated to rescale to a test scale within bounds."""

    status, code = 422, "unsupported_image_shape"


@dataclass(frozen=True)
class ImageLimits:
    """What ``decode`` refuses. The defaults are the service's defaults."""

    max_pixels: int = 40_000_000
    min_side: int = 16
    max_aspect_ratio: float = 6.0


DEFAULT_LIMITS = ImageLimits()

DATASET_LIMITS = ImageLimits(max_pixels=178_956_970, min_side=1, max_aspect_ratio=math.inf)
"""What training refuses: only what Pillow itself refuses as a decompression bomb (twice its
``MAX_IMAGE_PIXELS``). A dataset's panoramas and thumbnails are data, not hostile uploads."""


@dataclass(frozen=True)
class DecodedImage:
    """An RGB image ready for ``rescale``. ``width`` and ``height`` are the upload's size after
    EXIF orientation; ``image`` may be smaller when the JPEG was decoded in draft mode."""

    image: Image.Image
    width: int
    height: int
    format: str


def decode(
    data: bytes,
    limits: ImageLimits = DEFAULT_LIMITS,
    *,
    max_scale: int | None = None,
) -> DecodedImage:
    """Decode an uploaded image: first frame, EXIF orientation applied, any mode to RGB.

    The pixel count is checked from the header before any pixel is decoded. When ``max_scale``
    (the largest Q this image will be rescaled to) is given, a large JPEG is decoded by libjpeg
    at the smallest of 1/2, 1/4, 1/8 whose short side still reaches ``max_scale``; the result then
    differs from a full decode by resampling noise only.
    """
    if not data:
        raise UndecodableImage("the upload is empty")
    if limits.max_pixels > (Image.MAX_IMAGE_PIXELS or 0):
        # Pillow's own bomb check runs first, at open; ours must be the one that decides.
        Image.MAX_IMAGE_PIXELS = limits.max_pixels
    im = _open(data, limits)
    width, height = im.size
    if width * height > limits.max_pixels:
        raise ImageTooLarge(
            f"image is {width}x{height} = {width * height} pixels; the limit is {limits.max_pixels}"
        )
    try:
        orientation = im.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:  # a malformed EXIF block must not cost the image
        orientation = 1
    if orientation in _SWAPPING_ORIENTATIONS:
        width, height = height, width
    check_shape(width, height, limits)

    fmt = str(im.format or "")
    drafted = _load(im, limits, fmt, max_scale / min(width, height) if max_scale else None)
    # In place, so an upright image (most photos) is not copied; a malformed EXIF block is
    # metadata, and the pixels still count.
    with contextlib.suppress(Exception):
        ImageOps.exif_transpose(im, in_place=True)
    try:
        rgb = to_rgb(im)
    except Exception as err:
        raise UndecodableImage(f"cannot convert {im.mode} pixels to RGB: {err}") from None
    if not drafted:
        width, height = rgb.size
    return DecodedImage(image=rgb, width=width, height=height, format=fmt)


def _open(data: bytes, limits: ImageLimits) -> Image.Image:
    """The image's header read by Pillow (no pixel decoded yet), in the formats served."""
    try:
        return Image.open(io.BytesIO(data), formats=supported_formats())
    except Image.DecompressionBombError as err:
        raise _bomb(err, limits) from None
    except UnidentifiedImageError:
        raise UndecodableImage(
            f"not a decodable image (supported formats: {', '.join(format_names())})"
        ) from None
    except Exception as err:
        raise UndecodableImage(f"cannot decode the image: {err}") from None


def _load(im: Image.Image, limits: ImageLimits, fmt: str, factor: float | None) -> bool:
    """Decode the pixels, a JPEG at libjpeg's reduced size when ``factor`` (the largest scale
    over the short side) is at most 1/2; whether it was reduced."""
    drafted = False
    try:
        if factor is not None and factor <= 0.5 and fmt in ("JPEG", "MPO"):
            stored = im.size
            im.draft(None, (math.ceil(im.width * factor), math.ceil(im.height * factor)))
            drafted = im.size != stored
        im.load()
    except Image.DecompressionBombError as err:
        raise _bomb(err, limits) from None
    except Exception as err:  # decoders raise many types on hostile input; all mean "corrupt"
        raise UndecodableImage(f"cannot decode the image: {err}") from None
    return drafted


def load_rgb(path: str | Path, *, max_scale: int | None = None) -> Image.Image:
    """An image file decoded exactly as an upload is (``decode``), within ``DATASET_LIMITS``:
    the decoding of the training data, so that a model trains on the pixels it is served.
    ``max_scale`` lets libjpeg decode a large JPEG reduced, its short side still reaching it."""
    with open(path, "rb") as f:
        data = f.read()
    return decode(data, DATASET_LIMITS, max_scale=max_scale).image


def _bomb(err: Image.DecompressionBombError, limits: ImageLimits) -> ImageTooLarge:
    """Pillow's own bomb check fired (at twice its limit): say it with our limit."""
    declared = _DECLARED_PIXELS.search(str(err))
    size = f"{declared.group(1)} pixels" if declared else "far more pixels than allowed"
    return ImageTooLarge(f"the image header declares {size}; the limit is {limits.max_pixels}")


@functools.cache
def supported_formats() -> tuple[str, ...]:
    """The formats of ``FORMATS`` that this Pillow build can open, as Pillow's openers are
    named (MPO, a JPEG with more frames as cameras write it, is read by the JPEG opener)."""
    Image.init()
    return tuple(f for f in FORMATS if f in Image.OPEN)


def format_names() -> tuple[str, ...]:
    """The formats ``decode`` reads, as an error message lists them (MPO included)."""
    openers = supported_formats()
    return tuple(f for f in FORMATS if f in openers or (f == "MPO" and "JPEG" in openers))


def check_shape(width: int, height: int, limits: ImageLimits) -> None:
    """Refuse images too small to mean anything or too elongated to rescale within bounds."""
    short, long = min(width, height), max(width, height)
    if short < limits.min_side:
        raise ImageShapeError(
            f"image is {width}x{height}; its smaller side must be at least {limits.min_side}"
        )
    if long / short > limits.max_aspect_ratio:
        raise ImageShapeError(
            f"image is {width}x{height}, aspect ratio {long / short:.2f}; the limit is "
            f"{limits.max_aspect_ratio:g}"
        )


def to_rgb(im: Image.Image, background: tuple[int, int, int] = BACKGROUND) -> Image.Image:
    """Any Pillow mode to 8-bit RGB. Alpha is composited over ``background``; 16-bit grey (PNG,
    TIFF, PGM) is scaled to 8 bits rather than clipped as ``convert`` would; other 32-bit integer
    and float pixels are clipped to 0..255."""
    if im.mode == "RGB":
        return im
    if im.mode in _SIXTEEN_BIT_MODES or (im.mode == "I" and im.format == "PPM"):
        # Pillow opens a 16-bit PGM as 32-bit "I" holding 0..65535: 16-bit grey all the same.
        grey = np.asarray(im).astype(np.float32) / 257.0
        return Image.fromarray(np.round(grey).astype(np.uint8), mode="L").convert("RGB")
    if im.mode in ("I", "F"):
        # NaN (a float TIFF may hold any bits) would cast to an undefined byte: black instead.
        grey = np.nan_to_num(np.asarray(im, dtype=np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        return Image.fromarray(np.clip(grey, 0, 255).astype(np.uint8), mode="L").convert("RGB")
    has_alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info
    if has_alpha:
        rgba = im.convert("RGBA")
        canvas = Image.new("RGBA", im.size, (*background, 255))
        canvas.alpha_composite(rgba)
        return canvas.convert("RGB")
    return im.convert("RGB")


def rescaled_size(width: int, height: int, q: int) -> tuple[int, int]:
    """``(width, height)`` with the smaller side ``q``: torchvision's ``Resize(q)`` arithmetic."""
    if width <= height:
        return q, int(q * height / width)
    return int(q * width / height), q


def rescale(image: Image.Image, q: int) -> Image.Image:
    """Isotropic rescale so that the smallest side is ``q`` (paper §3.2), bilinear."""
    size = rescaled_size(image.width, image.height, q)
    if size == image.size:
        return image
    return image.resize(size, Image.Resampling.BILINEAR)


def to_input(
    image: Image.Image, preprocessing: Preprocessing, dtype: str = "float32"
) -> np.ndarray:
    """An RGB PIL image to ``(3, H, W)`` of ``dtype`` (``float32``, or ``float16`` for a float16
    export: ``OnnxInfo.input_dtype``) in the model's color order, then
    ``(pixel * scale - mean) / std`` with mean and std listed in that same order.

    An 8-bit channel has 256 values: each channel's are normalised once, in float32 exactly as
    the formula reads, rounded once to ``dtype``, and looked up, after moving the bytes to
    ``(3, H, W)`` (one byte each rather than four). Five times faster than the arithmetic on
    every pixel, same bits; in float16 the same bits as casting the float32 result, without the
    cast, which numpy does one value at a time (13 ms for a flip pair at Q=512, docs/gpu.md)."""
    pixels = np.asarray(image, dtype=np.uint8)
    if preprocessing.color_order == "BGR":
        pixels = pixels[:, :, ::-1]
    table = _normalization_table(preprocessing, np.dtype(dtype).name)
    planes = np.ascontiguousarray(pixels.transpose(2, 0, 1))
    out = np.empty(planes.shape, dtype=table.dtype)
    for channel in range(3):
        np.take(table[channel], planes[channel], out=out[channel])
    return out


INPUT_DTYPES = ("float32", "float16")
"""The network input dtypes ``to_input`` makes."""


@functools.lru_cache(maxsize=64)
def _normalization_table(preprocessing: Preprocessing, dtype: str = "float32") -> np.ndarray:
    """``(3, 256)`` of ``dtype``: the normalised value of every 8-bit level of each channel,
    computed in float32."""
    if dtype not in INPUT_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(INPUT_DTYPES)}, not {dtype!r}")
    levels = np.arange(256, dtype=np.float32)[None, :]
    mean = np.asarray(preprocessing.mean, dtype=np.float32)[:, None]
    std = np.asarray(preprocessing.std, dtype=np.float32)[:, None]
    table = ((levels * np.float32(preprocessing.scale) - mean) / std).astype(dtype, copy=False)
    table.setflags(write=False)
    return table
