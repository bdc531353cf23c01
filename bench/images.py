"""Synthetic but photo-like JPEGs: smooth gradients, overlapping shapes of many sizes, texture at
several scales and sensor noise, so that JPEG sizes and decode costs resemble real photos (a flat
or pure-noise image would flatter or punish the decoder)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """An RGB image of ``width x height`` that looks statistically like a photo."""
    rng = np.random.default_rng(seed)
    # Low-frequency colour field: a coarse random grid upsampled bicubically (sky, walls, light).
    coarse = rng.integers(30, 225, size=(4, 5, 3), dtype=np.uint8)
    image = Image.fromarray(coarse, "RGB").resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(image)
    short = min(width, height)
    for _ in range(60):
        size = int(short * rng.uniform(0.03, 0.45))
        x, y = int(rng.integers(-size // 2, width)), int(rng.integers(-size // 2, height))
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        box = (x, y, x + size, y + int(size * rng.uniform(0.4, 1.6)))
        kind = rng.integers(3)
        if kind == 0:
            draw.ellipse(box, fill=color)
        elif kind == 1:
            draw.rectangle(box, fill=color)
        else:
            pts = [
                (x + int(rng.integers(0, size)), y + int(rng.integers(0, size))) for _ in range(5)
            ]
            draw.polygon(pts, fill=color)
    image = image.filter(ImageFilter.GaussianBlur(radius=max(1.0, short / 1500)))
    # Mid-frequency texture (foliage, fabric) and per-pixel sensor noise.
    texture = rng.normal(0, 18, size=(height // 8 + 1, width // 8 + 1)).astype(np.float32)
    texture_img = Image.fromarray(texture).resize((width, height), Image.Resampling.BILINEAR)
    fine = rng.normal(0, 10, size=(height // 2 + 1, width // 2 + 1)).astype(np.float32)
    fine_img = Image.fromarray(fine).resize((width, height), Image.Resampling.BILINEAR)
    pixels = np.asarray(image, dtype=np.int16)
    pixels = pixels + np.asarray(texture_img, dtype=np.int16)[:, :, None]
    pixels += np.asarray(fine_img, dtype=np.int16)[:, :, None]
    pixels += rng.integers(-7, 8, size=pixels.shape, dtype=np.int16)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def jpeg(width: int, height: int, seed: int = 0, quality: int = 90) -> bytes:
    """``photo(width, height, seed)`` as JPEG bytes (4:2:0, as cameras write)."""
    buffer = io.BytesIO()
    photo(width, height, seed).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


STREAM_SIZES: tuple[tuple[int, int], ...] = (
    (640, 480),  # 0.3 MP, 4:3
    (480, 640),
    (800, 800),  # 1:1
    (1024, 768),
    (1280, 720),  # 16:9
    (720, 1280),
    (1250, 1000),  # 5:4
    (1000, 1250),
    (1500, 1000),  # 3:2
    (1000, 1500),
    (2000, 1000),  # 2:1
    (1000, 2000),
    (2520, 1080),  # 21:9
    (1080, 2520),
    (2048, 1536),  # 3.1 MP
    (3000, 2000),  # 6 MP
    (2250, 3000),  # 6.75 MP portrait
    (4000, 3000),  # 12 MP
)
"""The photo sizes of the real-traffic stream: aspect ratios 1:1 to 21:9 in both orientations,
0.3 to 12 megapixels (docs/benchmarks.md, "The photo stream")."""
