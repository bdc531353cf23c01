"""Decoding (orientation, modes, limits), torchvision-exact rescaling, and normalization."""

from __future__ import annotations

import io
import struct
import time
import zlib

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode

from model_store import Preprocessing
from model_store.imaging import (
    ImageError,
    ImageLimits,
    ImageShapeError,
    ImageTooLarge,
    UndecodableImage,
    decode,
    rescale,
    rescaled_size,
    to_input,
    to_rgb,
)
from tests.service.helpers import encode, sample_image


def with_png_size(png: bytes, width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` (valid CRC), whatever its data holds."""
    ihdr = bytearray(png[12:29])
    ihdr[4:12] = struct.pack(">II", width, height)
    crc = struct.pack(">I", zlib.crc32(bytes(ihdr)) & 0xFFFFFFFF)
    return png[:12] + bytes(ihdr) + crc + png[33:]


@pytest.mark.parametrize(("width", "height"), [(300, 260), (260, 300), (640, 480), (250, 250)])
@pytest.mark.parametrize("q", [224, 256, 384])
def test_rescale_is_torchvision_resize(width: int, height: int, q: int) -> None:
    image = sample_image(width, height, seed=width + q)
    ours = rescale(image, q)
    theirs = TF.resize(image, q, interpolation=InterpolationMode.BILINEAR)
    assert ours.size == theirs.size
    assert min(ours.size) == q
    assert np.array_equal(np.asarray(ours), np.asarray(theirs))


def test_rescaled_size_truncates_the_long_side() -> None:
    assert rescaled_size(300, 260, 256) == (int(256 * 300 / 260), 256) == (295, 256)
    assert rescaled_size(260, 300, 256) == (256, 295)
    assert rescaled_size(333, 333, 224) == (224, 224)


def test_to_input_normalizes_in_the_models_color_order() -> None:
    image = sample_image(40, 30)
    pixels = np.asarray(image, dtype=np.float64)
    rgb = Preprocessing(mean=(120.0, 115.0, 100.0), std=(60.0, 50.0, 40.0))
    x = to_input(image, rgb)
    assert x.dtype == np.float32 and x.shape == (3, 30, 40) and x.flags.c_contiguous
    want = (pixels - [120.0, 115.0, 100.0]) / [60.0, 50.0, 40.0]
    np.testing.assert_allclose(x, want.transpose(2, 0, 1), rtol=1e-6, atol=1e-5)

    bgr = Preprocessing(color_order="BGR", scale=1 / 255, mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.4))
    x = to_input(image, bgr)
    want = (pixels[:, :, ::-1] / 255 - [0.4, 0.5, 0.6]) / [0.2, 0.3, 0.4]
    np.testing.assert_allclose(x, want.transpose(2, 0, 1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("order", ["RGB", "BGR"])
def test_to_input_lookup_gives_the_float32_formula_bit_for_bit(order: str) -> None:
    """Every 8-bit level of every channel, against the per-pixel float32 arithmetic it
    replaces."""
    rng = np.random.default_rng(3)
    pixels = np.stack([rng.permutation(256) for _ in range(3)], axis=-1).astype(np.uint8)
    image = Image.fromarray(np.tile(pixels.reshape(16, 16, 3), (2, 3, 1)))
    pre = Preprocessing(
        color_order=order, scale=1 / 255, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)
    )
    arr = np.asarray(image, dtype=np.float32)
    arr = arr[:, :, ::-1] if order == "BGR" else arr
    mean, std = np.float32(pre.mean), np.float32(pre.std)
    want = ((arr * np.float32(pre.scale) - mean) / std).transpose(2, 0, 1)
    assert np.array_equal(to_input(image, pre), want)


@pytest.mark.parametrize("order", ["RGB", "BGR"])
def test_to_input_in_float16_is_the_float32_input_cast_bit_for_bit(order: str) -> None:
    """A float16 export's input: every 8-bit level of every channel rounded as numpy casts the
    float32 input, without the cast."""
    rng = np.random.default_rng(4)
    pixels = np.stack([rng.permutation(256) for _ in range(3)], axis=-1).astype(np.uint8)
    image = Image.fromarray(np.tile(pixels.reshape(16, 16, 3), (3, 2, 1)))
    pre = Preprocessing(
        color_order=order, scale=1 / 255, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)
    )
    half = to_input(image, pre, "float16")
    assert half.dtype == np.float16 and half.shape == (3, 48, 32) and half.flags.c_contiguous
    assert np.array_equal(
        half.view(np.uint16), to_input(image, pre).astype(np.float16).view(np.uint16)
    )
    assert to_input(image, pre, np.float16).dtype == np.float16  # a numpy dtype does too


@pytest.mark.parametrize("dtype", ["int8", "float64", "uint8"])
def test_to_input_refuses_other_dtypes(dtype: str) -> None:
    with pytest.raises(ValueError, match=f"dtype must be one of float32, float16, not '{dtype}'"):
        to_input(sample_image(20, 10), Preprocessing(mean=(0, 0, 0), std=(1, 1, 1)), dtype)


def test_to_input_equals_torchvision_to_tensor_and_normalize() -> None:
    image = sample_image(50, 40)
    pre = Preprocessing(scale=1 / 255, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    want = TF.normalize(TF.to_tensor(image), list(pre.mean), list(pre.std))
    np.testing.assert_allclose(to_input(image, pre), want.numpy(), atol=1e-5)
    assert isinstance(want, torch.Tensor)


def test_decode_png_reports_size_and_gives_rgb() -> None:
    image = sample_image()
    decoded = decode(encode(image))
    assert (decoded.width, decoded.height, decoded.format) == (300, 260, "PNG")
    assert decoded.image.mode == "RGB"
    assert np.array_equal(np.asarray(decoded.image), np.asarray(image))


@pytest.mark.parametrize(("orientation", "size"), [(1, (60, 40)), (3, (60, 40)), (6, (40, 60))])
def test_decode_applies_exif_orientation(orientation: int, size: tuple[int, int]) -> None:
    image = Image.new("RGB", (60, 40), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 20, 20))  # red block in the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = orientation
    decoded = decode(encode(image, "PNG", exif=exif.tobytes()))
    assert (decoded.width, decoded.height) == size == decoded.image.size
    pixels = np.asarray(decoded.image)
    red_corner = {1: (0, 0), 3: (-1, -1), 6: (0, -1)}[orientation]
    assert tuple(pixels[red_corner]) == (255, 0, 0)


def test_alpha_is_composited_over_white() -> None:
    rgba = Image.new("RGBA", (20, 20), (255, 0, 0, 0))
    rgba.paste((0, 0, 255, 255), (0, 0, 10, 20))
    rgb = np.asarray(decode(encode(rgba)).image)
    assert tuple(rgb[5, 5]) == (0, 0, 255)
    assert tuple(rgb[5, 15]) == (255, 255, 255)


def test_palette_with_transparency_and_first_gif_frame() -> None:
    frames = [Image.new("P", (20, 20), i) for i in (1, 2)]
    for f in frames:
        f.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    gif = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], transparency=0)
    rgb = np.asarray(decode(gif).image)
    assert tuple(rgb[0, 0]) == (255, 0, 0)


@pytest.mark.parametrize("mode", ["L", "1", "P", "CMYK", "YCbCr", "LA", "RGBA", "I", "F"])
def test_every_mode_becomes_8_bit_rgb(mode: str) -> None:
    image = sample_image(32, 24).convert(mode)
    rgb = to_rgb(image)
    assert rgb.mode == "RGB" and rgb.size == (32, 24)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF", "PPM"])
def test_sixteen_bit_grey_is_scaled_not_clipped(fmt: str) -> None:
    """A 16-bit PGM opens as mode I, 16-bit PNG and TIFF as I;16: all three scale alike."""
    grey = np.linspace(0, 65535, 32 * 24).reshape(24, 32).astype(np.uint16)
    decoded = decode(encode(Image.fromarray(grey), fmt))
    pixels = np.asarray(decoded.image)
    expected = np.round(grey.astype(np.float32) / 257.0).astype(np.uint8)
    assert decoded.format == fmt and pixels.shape == (24, 32, 3)
    assert np.array_equal(pixels[..., 0], expected) and np.array_equal(pixels[..., 2], expected)
    assert pixels[..., 0].max() == 255 and pixels[..., 0].mean() == pytest.approx(127.5, abs=1)


def test_thirty_two_bit_integers_are_clipped_not_scaled() -> None:
    """Mode I from another format than PGM has no known range: values above 255 are white."""
    values = np.array([[-5, 0, 100, 255, 256, 70000]], dtype=np.int32)
    rgb = to_rgb(Image.fromarray(values, mode="I"))
    assert np.asarray(rgb)[0, :, 0].tolist() == [0, 0, 100, 255, 255, 255]


@pytest.mark.parametrize(
    "data",
    [b"", b"not an image at all", encode(sample_image(), "JPEG")[:300], b"%!PS-Adobe-3.0 EPSF"],
)
def test_undecodable(data: bytes) -> None:
    with pytest.raises(UndecodableImage):
        decode(data)


def test_pixel_limit_is_checked_from_the_header_before_decoding() -> None:
    png = encode(sample_image(100, 80))
    with pytest.raises(ImageTooLarge, match="8000 pixels"):
        decode(png, ImageLimits(max_pixels=7999))
    bomb = with_png_size(png, 60_000, 60_000)
    started = time.perf_counter()
    with pytest.raises(ImageTooLarge):
        decode(bomb)
    assert time.perf_counter() - started < 0.5


def test_shape_limits() -> None:
    with pytest.raises(ImageShapeError, match="at least 16"):
        decode(encode(sample_image(15, 40)))
    with pytest.raises(ImageShapeError, match="aspect ratio"):
        decode(encode(sample_image(700, 100)))
    assert decode(encode(sample_image(600, 100))).width == 600


def test_jpeg_draft_decodes_smaller_but_keeps_the_needed_scale() -> None:
    image = sample_image(1200, 1000, seed=3)
    jpeg = encode(image, "JPEG", quality=95)
    full = decode(jpeg)
    draft = decode(jpeg, max_scale=256)
    assert (draft.width, draft.height) == (full.width, full.height) == (1200, 1000)
    assert draft.image.size == (600, 500)  # 1/4 would give 250 < 256
    assert decode(jpeg, max_scale=250).image.size == (300, 250)
    assert decode(jpeg, max_scale=600).image.size == (1200, 1000)
    a = np.asarray(rescale(full.image, 224), dtype=np.float64)
    b = np.asarray(rescale(draft.image, 224), dtype=np.float64)
    assert a.shape == b.shape
    assert np.abs(a - b).mean() < 4.0


def test_small_jpeg_is_never_drafted() -> None:
    jpeg = encode(sample_image(), "JPEG", quality=95)
    decoded = decode(jpeg, max_scale=224)
    assert decoded.image.size == (300, 260)
    with Image.open(io.BytesIO(jpeg)) as plain:
        assert np.array_equal(np.asarray(decoded.image), np.asarray(plain.convert("RGB")))


@pytest.mark.filterwarnings("ignore:Truncated File Read")
@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "WEBP", "TIFF", "BMP"])
def test_corrupted_files_only_ever_raise_image_errors(fmt: str) -> None:
    """Flipped bytes, cut files and junk spliced in: decode returns an RGB image or raises an
    ImageError (a 4xx), never anything else (a 500)."""
    original = encode(sample_image(64, 48), fmt)
    rng = np.random.default_rng(len(fmt))
    for _ in range(60):
        data = bytearray(original)
        for position in rng.integers(0, len(data), size=int(rng.integers(1, 8))):
            data[position] = int(rng.integers(0, 256))
        if rng.random() < 0.3:
            data = data[: int(rng.integers(8, len(data)))]
        try:
            decoded = decode(bytes(data))
        except ImageError:
            continue
        assert decoded.image.mode == "RGB"


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_a_limit_above_pillows_own_is_the_one_that_decides() -> None:
    header_only = with_png_size(encode(sample_image(100, 80)), 20_000, 10_000)
    with pytest.raises(ImageTooLarge, match="200000000 pixels; the limit is 150000000"):
        decode(header_only, ImageLimits(max_pixels=150_000_000))
    with pytest.raises(UndecodableImage):  # allowed, then found to be corrupt
        decode(header_only, ImageLimits(max_pixels=250_000_000, max_aspect_ratio=10))


def test_the_error_lists_mpo_among_the_formats() -> None:
    """Pillow reads MPO (camera JPEGs with several frames) through its JPEG opener."""
    from model_store.imaging import format_names

    assert "MPO" in format_names() and "JPEG" in format_names()
    with pytest.raises(UndecodableImage, match="MPO"):
        decode(b"not an image at all")
