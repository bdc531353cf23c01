"""The procedural ``shapes`` dataset: one shape class per image, on a cluttered background.

Each image is rendered with Pillow at an arbitrary size and aspect ratio (sides 240..480 by
default). The class shape appears once, at a varied size, position, rotation, aspect and colour,
over a background of smooth colour fields, noise, lines, scribbles and irregular blobs (never one
of the class shapes), and may be crossed by a line. Everything is drawn from
``numpy.random.default_rng([seed, class_index, image_index])``, so an image depends only on the
seed, its class and its index: the same seed writes the same files, in any order, in parallel.

``CLASSES`` are the 8 classes of the demo models; ``NEW_CLASSES`` are other kinds of shape, never
seen by them, rendered in the same style, for transfer (docs/evaluation.md, "Transfer"). A class's
index in ``ALL_CLASSES`` (the demo classes first, so theirs are unchanged) seeds its images, so an
image does not depend on which other classes are written beside it.

``write_shapes(dir, per_class, seed, classes=...)`` writes an ImageFolder layout
(``dir/<class>/*.jpg``) and ``dir/annotations.json``: each image's shape's tight box in the file's
pixels, ``[x0, y0, x1, y1]`` with x1 and y1 exclusive, its outline included. This module needs no
torch (Pillow and numpy only).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from model_store.progress import progress_bar

# Sorted, so that torchvision's ImageFolder (which sorts class folders) gives index i to CLASSES[i].
CLASSES: tuple[str, ...] = (
    "circle",
    "cross",
    "heart",
    "hexagon",
    "ring",
    "square",
    "star",
    "triangle",
)
# Shapes the demo models never saw (none is a demo shape rotated or stretched a little).
NEW_CLASSES: tuple[str, ...] = (
    "arrow",
    "crescent",
    "diamond",
    "ellipse",
    "octagon",
    "pentagon",
    "semicircle",
    "trapezoid",
)
ALL_CLASSES: tuple[str, ...] = CLASSES + NEW_CLASSES  # the index seeds the images: append only
MIN_SIDE = 240
MAX_SIDE = 480
JPEG_QUALITY = 92
SUPERSAMPLE = 4  # the shape's mask is drawn at 4x and downsampled: antialiased edges
DONE_FILE = "shapes.json"  # written last: a folder without it is incomplete
ANNOTATIONS_FILE = "annotations.json"


def _regular_polygon(n: int, phase: float = 0.0) -> np.ndarray:
    t = phase + 2 * np.pi * np.arange(n) / n
    return np.stack([np.cos(t), np.sin(t)], axis=1)


def _star(inner: float, points: int = 5) -> np.ndarray:
    t = -np.pi / 2 + np.pi * np.arange(2 * points) / points
    r = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)


def _cross(arm: float) -> np.ndarray:
    a = arm / 2
    return np.array(
        [(-a, -1), (a, -1), (a, -a), (1, -a), (1, a), (a, a),
         (a, 1), (-a, 1), (-a, a), (-1, a), (-1, -a), (-a, -a)],
        dtype=float,
    )  # fmt: skip


def _heart() -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, 96, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    pts = np.stack([x, y + 2.5], axis=1)
    return pts / np.abs(pts).max()


def _shape_outlines(name: str, rng: np.random.Generator) -> tuple[list[np.ndarray], list[bool]]:
    """Closed outlines in unit coordinates (radius about 1) and, per outline, fill (True) or cut."""
    if name == "circle":
        return [_regular_polygon(128)], [True]
    if name == "ring":
        inner = rng.uniform(0.45, 0.7)
        return [_regular_polygon(128), inner * _regular_polygon(128)], [True, False]
    if name == "square":
        return [_regular_polygon(4, np.pi / 4) * 1.1], [True]
    if name == "triangle":
        return [_regular_polygon(3, -np.pi / 2) * 1.15 + (0, 0.15)], [True]
    if name == "hexagon":
        return [_regular_polygon(6)], [True]
    if name == "star":
        return [_star(rng.uniform(0.38, 0.5))], [True]
    if name == "cross":
        return [_cross(rng.uniform(0.3, 0.45))], [True]
    if name == "heart":
        return [_heart()], [True]
    # New kinds. Each outline stays within radius 1.13, so that with the aspect (up to 1.15) it
    # fits the mask's square of side 2.6 x radius.
    if name == "pentagon":
        return [_regular_polygon(5, -np.pi / 2) * 1.05 + (0, 0.1)], [True]
    if name == "octagon":
        return [_regular_polygon(8, np.pi / 8) * 1.05], [True]
    if name == "diamond":  # a rhombus, far narrower than a square
        half_width = rng.uniform(0.5, 0.65)
        return [np.array([(0, -1.1), (half_width, 0), (0, 1.1), (-half_width, 0)])], [True]
    if name == "ellipse":  # far flatter than a stretched circle
        return [_regular_polygon(128) * (1.1, rng.uniform(0.45, 0.62))], [True]
    if name == "crescent":  # a disc with an offset disc cut out of it
        cut = rng.uniform(0.8, 0.95)
        offset = rng.uniform(0.4, 0.55)
        return [_regular_polygon(128), cut * _regular_polygon(128) + (offset, 0)], [True, False]
    if name == "arrow":
        shaft, head, neck = rng.uniform(0.16, 0.26), rng.uniform(0.55, 0.7), rng.uniform(0.1, 0.35)
        return [
            np.array(
                [(-1.1, -shaft), (neck, -shaft), (neck, -head), (1.1, 0),
                 (neck, head), (neck, shaft), (-1.1, shaft)]
            )
        ], [True]  # fmt: skip
    if name == "semicircle":
        t = np.linspace(0, np.pi, 65)
        return [np.stack([np.cos(t), -np.sin(t)], axis=1) + (0, 0.4)], [True]
    if name == "trapezoid":
        top = rng.uniform(0.35, 0.6)
        return [np.array([(-0.95, 0.55), (0.95, 0.55), (top, -0.55), (-top, -0.55)])], [True]
    raise ValueError(f"unknown shape class {name!r}")


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(0, 256, size=3))


def _background(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    kind = rng.integers(3)
    if kind == 0:  # a linear gradient between two colours
        a, b = np.array(_colour(rng), float), np.array(_colour(rng), float)
        angle = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:height, 0:width]
        t = (np.cos(angle) * xx / width + np.sin(angle) * yy / height + 1) / 2
        t = (t - t.min()) / max(t.max() - t.min(), 1e-6)
        field = a + t[..., None] * (b - a)
    elif kind == 1:  # a blotchy low-frequency colour field
        cells = rng.integers(2, 7, size=2)
        base = np.array(_colour(rng), float)
        small = np.clip(base + rng.uniform(-70, 70, size=(cells[0], cells[1], 3)), 0, 255)
        small = small.astype(np.uint8)
        field = np.asarray(
            Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC), float
        )
    else:  # a flat colour
        field = np.broadcast_to(np.array(_colour(rng), float), (height, width, 3))
    noise = rng.normal(0, rng.uniform(0, 18), size=(height, width, 1 if rng.random() < 0.5 else 3))
    return Image.fromarray(np.clip(field + noise, 0, 255).astype(np.uint8))


def _blob(rng: np.random.Generator, cx: float, cy: float, radius: float) -> list[tuple]:
    """An irregular polygon with strongly varying radii: clutter that is none of the classes."""
    n = int(rng.integers(5, 10))
    t = np.sort(rng.uniform(0, 2 * np.pi, n))
    r = radius * rng.uniform(0.25, 1.0, n)
    return [(cx + ri * math.cos(ti), cy + ri * math.sin(ti)) for ri, ti in zip(r, t, strict=True)]


def _clutter(rng: np.random.Generator, draw: ImageDraw.ImageDraw, width: int, height: int) -> None:
    short = min(width, height)
    for _ in range(int(rng.integers(0, 4))):  # irregular blobs
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        draw.polygon(_blob(rng, cx, cy, rng.uniform(0.04, 0.13) * short), fill=_colour(rng))
    for _ in range(int(rng.integers(0, 3))):  # scribbles: random walks
        steps = rng.normal(0, 0.06 * short, size=(int(rng.integers(4, 12)), 2)).cumsum(axis=0)
        start = rng.uniform((0, 0), (width, height))
        draw.line(
            [tuple(p) for p in start + steps], fill=_colour(rng), width=int(rng.integers(1, 5))
        )
    for _ in range(int(rng.integers(0, 5))):  # straight lines across the image
        p = rng.uniform((0, 0), (width, height), size=(2, 2))
        draw.line([tuple(p[0]), tuple(p[1])], fill=_colour(rng), width=int(rng.integers(1, 5)))


def _shape_colour(rng: np.random.Generator, region: np.ndarray) -> tuple[int, int, int]:
    """A random colour that stands out from the mean of the background under the shape."""
    mean = region.reshape(-1, 3).mean(axis=0)
    best, best_dist = None, -1.0
    for _ in range(12):
        c = np.array(_colour(rng), float)
        dist = float(np.linalg.norm(c - mean))
        if dist > 110:
            return tuple(int(v) for v in c)
        if dist > best_dist:
            best, best_dist = c, dist
    return tuple(int(v) for v in best)


def _shape_mask(
    name: str, rng: np.random.Generator, radius: float, rotation: float, aspect: float
) -> Image.Image:
    """The class shape's antialiased mask (mode L) in a square box of side ~2 * radius."""
    outlines, fills = _shape_outlines(name, rng)
    side = int(math.ceil(2.6 * radius))
    big = side * SUPERSAMPLE
    mask = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(mask)
    c, s = math.cos(rotation), math.sin(rotation)
    rot = np.array([[c, -s], [s, c]])
    for outline, fill in zip(outlines, fills, strict=True):
        pts = outline * np.array([aspect, 1 / aspect])
        pts = pts @ rot.T * radius * SUPERSAMPLE + big / 2
        draw.polygon([tuple(p) for p in pts], fill=255 if fill else 0)
    return mask.resize((side, side), Image.Resampling.BOX)


def _position(rng: np.random.Generator, side: int, radius: float) -> int:
    """A centre coordinate within 18% of the side from the middle, the shape kept inside."""
    low = max(min(1.15 * radius, side / 2), side * 0.32)
    high = min(max(side - 1.15 * radius, side / 2), side * 0.68)
    return int(round(rng.uniform(low, high)))


@dataclass(frozen=True)
class _Paint:
    """How the shape is coloured: its fill, an optional outline (filter size, colour) and an
    optional linear shading (angle, strength)."""

    colour: tuple[int, int, int]
    outline: tuple[int, tuple[int, int, int]] | None
    shading: tuple[float, float] | None


def _paint(rng: np.random.Generator, region: np.ndarray) -> _Paint:
    colour = _shape_colour(rng, region)
    outline = None
    if rng.random() < 0.35:  # a contrasting outline
        outline = (2 * int(rng.integers(1, 3)) + 1, _colour(rng))
    shading = None
    if rng.random() < 0.4:  # shading across the shape
        angle = rng.uniform(0, 2 * np.pi)
        shading = (angle, rng.uniform(0.2, 0.6))
    return _Paint(colour, outline, shading)


def render_shape(
    name: str, rng: np.random.Generator, size: tuple[int, int] | None = None
) -> Image.Image:
    """One RGB image of class ``name``; ``size`` = (width, height) or random in 240..480."""
    return render_annotated(name, rng, size)[0]


def render_annotated(
    name: str, rng: np.random.Generator, size: tuple[int, int] | None = None
) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """``render_shape``'s image and the shape's tight box ``(x0, y0, x1, y1)`` in its pixels
    (x1, y1 exclusive): every pixel the shape or its outline covers, however little."""
    if size is None:
        width, height = (int(v) for v in rng.integers(MIN_SIDE, MAX_SIDE + 1, size=2))
    else:
        width, height = size
    image = _background(rng, width, height)
    _clutter(rng, ImageDraw.Draw(image), width, height)

    short = min(width, height)
    radius = rng.uniform(0.24, 0.40) * short
    mask = _shape_mask(
        name, rng, radius, rotation=rng.uniform(0, 2 * np.pi), aspect=rng.uniform(0.87, 1.15)
    )
    side = mask.size[0]
    # Near the centre, as in photographs of an object, but rarely exactly at it.
    cx = _position(rng, width, radius)
    cy = _position(rng, height, radius)
    box = (cx - side // 2, cy - side // 2)
    region = np.asarray(image.crop((box[0], box[1], box[0] + side, box[1] + side)))
    paint = _paint(rng, region)
    covered = mask
    if paint.outline is not None:
        covered = mask.filter(ImageFilter.MaxFilter(paint.outline[0]))
        image.paste(paint.outline[1], box, covered)
    fill = Image.new("RGB", (side, side), paint.colour)
    if paint.shading is not None:
        angle, strength = paint.shading
        yy, xx = np.mgrid[0:side, 0:side] / max(side - 1, 1) - 0.5
        shade = 1 + strength * (np.cos(angle) * xx + np.sin(angle) * yy)
        arr = np.asarray(fill, float) * shade[..., None]
        fill = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    image.paste(fill, box, mask)
    tight = _tight_box(covered, box, width, height)

    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(1, 3)) if rng.random() < 0.25 else 0):  # occluding lines
        p = rng.uniform((0, 0), (width, height), size=(2, 2))
        draw.line([tuple(p[0]), tuple(p[1])], fill=_colour(rng), width=int(rng.integers(1, 4)))
    if rng.random() < 0.3:
        image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.2))))
    noise_std = rng.uniform(0, 10)
    if noise_std > 1:
        arr = np.asarray(image, float) + rng.normal(0, noise_std, size=(height, width, 3))
        image = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    return image, tight


def _tight_box(
    covered: Image.Image, offset: tuple[int, int], width: int, height: int
) -> tuple[int, int, int, int]:
    """The bounding box of the non-zero pixels of ``covered`` pasted at ``offset``, clipped to
    the image."""
    full = Image.new("L", (width, height), 0)
    full.paste(covered, offset)
    bbox = full.getbbox()
    if bbox is None:  # cannot happen: the shape's centre is always inside the image
        raise RuntimeError("the shape fell outside the image")
    return bbox


def image_rng(seed: int, class_index: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, class_index, index])


def shape_image(seed: int, class_index: int, index: int) -> Image.Image:
    """Image ``index`` of class ``ALL_CLASSES[class_index]`` for ``seed``: the same every time
    (indices below 8 are the demo ``CLASSES``)."""
    return render_shape(ALL_CLASSES[class_index], image_rng(seed, class_index, index))


def annotated_image(
    seed: int, class_index: int, index: int
) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """``shape_image`` and its shape's tight box (see ``render_annotated``)."""
    return render_annotated(ALL_CLASSES[class_index], image_rng(seed, class_index, index))


def select_classes(classes: Sequence[str] | str | None) -> tuple[str, ...]:
    """The classes named (a sequence or a comma list), sorted as ImageFolder indexes them;
    ``None``: the 8 demo ``CLASSES``. Unknown names are a ``ValueError`` listing the known ones."""
    if classes is None:
        return CLASSES
    names = classes.split(",") if isinstance(classes, str) else list(classes)
    names = [n.strip() for n in names if n.strip()]
    unknown = [n for n in names if n not in ALL_CLASSES]
    if unknown:
        raise ValueError(
            f"unknown shape class{'es' if len(unknown) > 1 else ''} "
            f"{', '.join(repr(n) for n in unknown)}; known: {', '.join(sorted(ALL_CLASSES))} "
            f"(never seen by the demo models: {', '.join(NEW_CLASSES)})"
        )
    if not names:
        raise ValueError("no classes named; known: " + ", ".join(sorted(ALL_CLASSES)))
    return tuple(sorted(set(names)))


def _file_name(name: str, index: int) -> str:
    return f"{name}_{index:05d}.jpg"


def _write_one(job: tuple[str, int, int, int]) -> dict:
    root, seed, class_index, index = job
    name = ALL_CLASSES[class_index]
    file = f"{name}/{_file_name(name, index)}"
    image, box = annotated_image(seed, class_index, index)
    image.save(Path(root) / file, quality=JPEG_QUALITY)
    return {"file": file, "label": name, "box": list(box)}


def _jobs(
    root: Path, per_class: int, seed: int, classes: Sequence[str]
) -> Iterator[tuple[str, int, int, int]]:
    for index in range(per_class):
        for name in classes:
            yield str(root), seed, ALL_CLASSES.index(name), index


def is_complete(
    root: str | Path, per_class: int, seed: int, classes: Sequence[str] | str | None = None
) -> bool:
    """True when ``root`` holds a finished ``write_shapes(root, per_class, seed, classes)``
    (with its ``annotations.json``: folders written before it are not complete)."""
    try:
        meta = json.loads((Path(root) / DONE_FILE).read_text())
    except (OSError, ValueError):
        return False
    return (
        meta.get("per_class") == per_class
        and meta.get("seed") == seed
        and meta.get("classes") == list(select_classes(classes))
        and (Path(root) / ANNOTATIONS_FILE).is_file()
    )


def _check_replaceable(root: Path, overwrite: bool) -> None:
    if not root.exists() or not any(root.iterdir()):
        return
    if not (root / DONE_FILE).exists():
        raise FileExistsError(
            f"{root} is not empty and not a shapes folder (no {DONE_FILE}); refusing to "
            "delete it: choose an empty or new folder"
        )
    if not overwrite:
        raise FileExistsError(f"{root} already holds a shapes folder; --force replaces it")


def write_shapes(
    root: str | Path,
    per_class: int,
    seed: int,
    *,
    classes: Sequence[str] | str | None = None,
    workers: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write ``per_class`` images of each class to ``root/<class>/`` (ImageFolder layout) and
    their boxes to ``root/annotations.json``.

    ``classes``: names from ``ALL_CLASSES`` (default: the 8 demo ``CLASSES``). Files are written
    into a temporary sibling folder that is renamed into place at the end, so an interrupted run
    never leaves a half-written dataset at ``root``. ``root`` must not exist or be empty; with
    ``overwrite`` it may also hold an earlier shapes folder, which is replaced. Any other folder
    is never deleted.
    """
    root = Path(root)
    if per_class < 1:
        raise ValueError("per_class must be >= 1")
    names = select_classes(classes)
    _check_replaceable(root, overwrite)
    tmp = root.with_name(f".{root.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    for name in names:
        (tmp / name).mkdir(parents=True)
    jobs = list(_jobs(tmp, per_class, seed, names))
    workers = workers if workers is not None else min(4, os.cpu_count() or 1)
    bar = progress_bar(total=len(jobs), desc=f"shapes seed {seed}", unit="img", enabled=progress)
    records = []
    try:
        if workers <= 1:
            for job in jobs:
                records.append(_write_one(job))
                bar.update()
        else:
            with ProcessPoolExecutor(workers) as pool:
                for record in pool.map(_write_one, jobs, chunksize=16):
                    records.append(record)
                    bar.update()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        bar.close()
    records.sort(key=lambda r: r["file"])
    lines = ",\n".join(f"  {json.dumps(r)}" for r in records)  # one image a line
    (tmp / ANNOTATIONS_FILE).write_text(f'{{"images": [\n{lines}\n]}}\n')
    meta = {"dataset": "shapes", "classes": list(names), "per_class": per_class, "seed": seed}
    (tmp / DONE_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    if root.exists():
        shutil.rmtree(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, root)
    return root
