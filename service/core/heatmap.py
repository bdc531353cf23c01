"""A class score map drawn over its image (docs/evaluation.md, "Score maps of each image").

Each scale's map is placed on the image by its geometry (docs/serving.md, "Score maps"): cell
``(i, j)`` scores the 224 window at ``(32 j, 32 i)`` of the image rescaled to Q, so on the image
it covers that window scaled back by ``image side / rescaled side``. A pixel's heat is the mean
score of the windows that cover it; pixels no window covers (the right and bottom margins of
``side mod 32``) take the nearest covered value. Scales are averaged after placing.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from model_store.imaging import rescaled_size

STRIDE, WINDOW = 32, 224
PREVIEW_SIDE = 320
"""Long side of the drawn image: enough to see where a class scores, small on disk."""

_COLOURS = np.array(
    [[48, 18, 59], [70, 107, 227], [40, 188, 235], [50, 241, 152], [164, 252, 60],
     [237, 208, 58], [251, 128, 34], [210, 49, 5], [122, 4, 3]],
    dtype=np.float64,
)  # fmt: skip
"""Stops of the Turbo colour map (Google, 2019), low to high: blue is low, red is high."""


def placed(
    score_map: np.ndarray, image_size: tuple[int, int], q: int, out_size: tuple[int, int]
) -> np.ndarray:
    """``(H, W)`` heat of ``out_size`` (width, height: the image drawn at any size) from one
    scale's map ``(h, w)`` of one class, for an image of ``image_size`` rescaled to ``q``."""
    rw, rh = rescaled_size(*image_size, q)
    sx, sy = out_size[0] / rw, out_size[1] / rh
    total = np.zeros((out_size[1], out_size[0]))
    count = np.zeros_like(total)
    rows, cols = score_map.shape
    for i in range(rows):
        for j in range(cols):
            y0, x0 = round(STRIDE * i * sy), round(STRIDE * j * sx)
            y1, x1 = round((STRIDE * i + WINDOW) * sy), round((STRIDE * j + WINDOW) * sx)
            total[y0:y1, x0:x1] += score_map[i, j]
            count[y0:y1, x0:x1] += 1
    heat = np.divide(total, count, out=np.full_like(total, np.nan), where=count > 0)
    return _fill_margins(heat)


def _fill_margins(heat: np.ndarray) -> np.ndarray:
    """Uncovered right and bottom margins take the last covered column and row."""
    rows = np.flatnonzero(~np.isnan(heat).all(axis=1))
    cols = np.flatnonzero(~np.isnan(heat).all(axis=0))
    r = np.minimum(np.arange(heat.shape[0]), rows[-1])
    c = np.minimum(np.arange(heat.shape[1]), cols[-1])
    return heat[r][:, c]


def class_heat(
    maps: dict[int, np.ndarray], cls: int, image_size: tuple[int, int], out_size: tuple[int, int]
) -> np.ndarray:
    """The mean over scales of class ``cls``'s placed maps (``maps``: Q to ``(K, h, w)``)."""
    placed_maps = [placed(m[cls], image_size, q, out_size) for q, m in sorted(maps.items())]
    return np.mean(placed_maps, axis=0)


def preview_size(image_size: tuple[int, int]) -> tuple[int, int]:
    scale = PREVIEW_SIDE / max(image_size)
    return max(1, round(image_size[0] * scale)), max(1, round(image_size[1] * scale))


def colourise(heat: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` uint8: ``heat`` from its minimum (blue) to its maximum (red)."""
    low, high = float(np.min(heat)), float(np.max(heat))
    t = (heat - low) / (high - low) if high > low else np.zeros_like(heat)
    position = t * (len(_COLOURS) - 1)
    lower = np.floor(position).astype(int).clip(0, len(_COLOURS) - 2)
    frac = (position - lower)[..., None]
    rgb = _COLOURS[lower] * (1 - frac) + _COLOURS[lower + 1] * frac
    return rgb.round().astype(np.uint8)


def overlay(image: Image.Image, heat: np.ndarray, caption: str, alpha: float = 0.5) -> Image.Image:
    """``image`` drawn at ``heat``'s size with ``heat`` blended over it, under a caption."""
    size = (heat.shape[1], heat.shape[0])
    base = image.convert("RGB").resize(size, Image.Resampling.BILINEAR)
    colours = Image.fromarray(colourise(heat))
    drawn = Image.blend(base, colours, alpha)
    canvas = Image.new("RGB", (size[0], size[1] + 18), "white")
    canvas.paste(drawn, (0, 18))
    ImageDraw.Draw(canvas).text((4, 3), caption, fill="black")
    return canvas


def side_by_side(panels: list[Image.Image]) -> Image.Image:
    width = sum(p.width for p in panels) + 4 * (len(panels) - 1)
    out = Image.new("RGB", (width, max(p.height for p in panels)), "white")
    x = 0
    for panel in panels:
        out.paste(panel, (x, 0))
        x += panel.width + 4
    return out
