"""Boxes drawn over their image (docs/evaluation.md, "Boxes of each image"): what
``verydeep evaluate --task localization --draw DIR`` writes for every image.

The image is drawn with its long side at ``heatmap.PREVIEW_SIDE`` pixels, boxes scaled with it:
the truth in green, the top-1 guess in red (a right one, IoU >= 0.5 with a truth box, in a
thicker line) and the central crop's box of the true class (paper Table 8's protocol) dashed in
blue, under a caption with the guess's class, posterior and ``box_score``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw

from service.core import heatmap

Box = Sequence[float]
TRUTH, GUESS, CENTRAL = (30, 170, 60), (220, 30, 30), (40, 90, 230)
CAPTION = 18
"""Pixels above the image for the caption."""


def _scaled(box: Box, scale: float) -> list[float]:
    return [float(c) * scale for c in box]


def _dashed(draw: ImageDraw.ImageDraw, box: list[float], colour: tuple, dash: float = 6) -> None:
    x0, y0, x1, y1 = box
    for a, b, fixed, horizontal in ((x0, x1, y0, True), (x0, x1, y1, True),
                                    (y0, y1, x0, False), (y0, y1, x1, False)):  # fmt: skip
        t = a
        while t < b:
            end = min(t + dash, b)
            line = [(t, fixed), (end, fixed)] if horizontal else [(fixed, t), (fixed, end)]
            draw.line(line, fill=colour, width=2)
            t += 2 * dash


def draw_boxes(
    image: Image.Image,
    truths: Sequence[Box],
    guess: Box,
    caption: str,
    *,
    right: bool,
    central: Box | None = None,
    frame: tuple[int, int] | None = None,
) -> Image.Image:
    """``image`` at preview size with ``truths``, ``guess`` and ``central`` drawn over it,
    under ``caption``. Boxes are in the pixels of ``frame`` (width, height; default the
    image's own): the file's size where ``image`` is a smaller draft decoding of it."""
    frame = frame or image.size
    size = heatmap.preview_size(frame)
    scale = size[0] / frame[0]
    canvas = Image.new("RGB", (size[0], size[1] + CAPTION), "white")
    canvas.paste(image.convert("RGB").resize(size, Image.Resampling.BILINEAR), (0, CAPTION))
    draw = ImageDraw.Draw(canvas)
    shift = [0, CAPTION, 0, CAPTION]
    for truth in truths:
        draw.rectangle([c + s for c, s in zip(_scaled(truth, scale), shift, strict=True)],
                       outline=TRUTH, width=2)  # fmt: skip
    if central is not None:
        _dashed(draw, [c + s for c, s in zip(_scaled(central, scale), shift, strict=True)], CENTRAL)
    guess_box = [c + s for c, s in zip(_scaled(guess, scale), shift, strict=True)]
    draw.rectangle(guess_box, outline=GUESS, width=3 if right else 1)
    draw.text((4, 3), caption, fill="black")
    return canvas


def write_box_drawing(out: Path, file: str, picture: Image.Image) -> Path:
    """``out/<class>/<image stem>.png`` for the image ``file`` (``<class>/<name>``)."""
    relative = Path(file)
    path = out / relative.parent / f"{relative.stem}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path)
    return path
