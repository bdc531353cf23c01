"""Ground-truth boxes of a labelled image folder (docs/localization.md, "Boxes in the data").

Two sources, one result (a relative file path -> its class folder name and boxes):

- ``annotations.json`` at the folder's root, as ``verydeep make-shapes`` writes it:
  ``{"images": [{"file": "star/star_00000.jpg", "label": "star", "box": [x0, y0, x1, y1]}]}``,
  one box per image (a ``boxes`` list of several is read too), in the file's pixels, x1 and y1
  exclusive;
- ILSVRC's box files, Pascal VOC XML, one per image: ``<object><name>`` is the class folder's
  name (a WordNet id for ImageNet) and ``<bndbox>`` holds 1-based inclusive pixel indices, so
  ``(xmin - 1, ymin - 1, xmax, ymax)`` is the exclusive box. The file of ``<class>/<stem>.JPEG``
  is ``BOXES/<class>/<stem>.xml`` (ILSVRC's training boxes) or ``BOXES/<stem>.xml`` (its
  validation boxes). Objects of another class than the image's folder are not its truth.

No torch: training (targets) and evaluation (truth) read boxes with the same code.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

ANNOTATIONS_FILE = "annotations.json"

Box = tuple[float, float, float, float]


class AnnotationError(ValueError):
    """A box file that cannot be used; the message names the file and what is wrong."""


@dataclass(frozen=True)
class Annotation:
    """An image's class (its folder's name) and its ground-truth boxes of that class."""

    file: str
    label: str
    boxes: tuple[Box, ...]


def _box(values: object, where: str) -> Box:
    if not (isinstance(values, list | tuple) and len(values) == 4):
        raise AnnotationError(f"{where}: a box is [x0, y0, x1, y1], got {values!r}")
    try:
        x0, y0, x1, y1 = (float(v) for v in values)
    except (TypeError, ValueError):
        raise AnnotationError(f"{where}: box values must be numbers, got {values!r}") from None
    if not (x1 > x0 >= 0 and y1 > y0 >= 0):
        raise AnnotationError(f"{where}: box {values!r} is empty or negative (x1 > x0 >= 0)")
    return (x0, y0, x1, y1)


def read_annotations_json(path: str | Path) -> dict[str, Annotation]:
    """The entries of an ``annotations.json``, keyed by their ``file`` (POSIX, relative)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        images = data["images"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise AnnotationError(f"{path}: not an annotations file ({err})") from None
    result: dict[str, Annotation] = {}
    for k, item in enumerate(images):
        where = f"{path}, images[{k}]"
        if not isinstance(item, dict) or "file" not in item or "label" not in item:
            raise AnnotationError(f"{where}: needs 'file', 'label' and 'box'")
        raw = item.get("boxes", [item.get("box")])
        boxes = tuple(_box(b, where) for b in raw)
        if not boxes:
            raise AnnotationError(f"{where}: no box")
        file = str(Path(item["file"]).as_posix())
        result[file] = Annotation(file, str(item["label"]), boxes)
    return result


def read_voc(path: str | Path) -> list[tuple[str, Box]]:
    """Every ``(name, box)`` object of a Pascal VOC XML file, boxes made exclusive."""
    path = Path(path)
    try:
        root = ElementTree.parse(path).getroot()
    except (OSError, ElementTree.ParseError) as err:
        raise AnnotationError(f"{path}: not a readable VOC XML file ({err})") from None
    objects = []
    for k, obj in enumerate(root.iter("object")):
        name, bndbox = obj.findtext("name"), obj.find("bndbox")
        if name is None or bndbox is None:
            raise AnnotationError(f"{path}: object {k} lacks <name> or <bndbox>")
        values = [bndbox.findtext(tag) for tag in ("xmin", "ymin", "xmax", "ymax")]
        try:
            xmin, ymin, xmax, ymax = (float(v) for v in values)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise AnnotationError(f"{path}: object {k} has a bad <bndbox> {values}") from None
        objects.append((name.strip(), _box([xmin - 1, ymin - 1, xmax, ymax], f"{path}")))
    return objects


def folder_annotations(
    root: str | Path, files: list[str], boxes_dir: str | Path | None = None
) -> dict[str, Annotation]:
    """The boxes of ``files`` (``<class>/<name>`` relative to ``root``): from ``boxes_dir``'s
    VOC files when given, else from ``root/annotations.json``. Raises AnnotationError naming the
    first file without a box of its class."""
    root = Path(root)
    if boxes_dir is None:
        json_path = root / ANNOTATIONS_FILE
        if not json_path.is_file():
            raise AnnotationError(
                f"{root} has no {ANNOTATIONS_FILE}; give the folder of VOC XML box files "
                "(ILSVRC's) with --boxes DIR"
            )
        known = read_annotations_json(json_path)
        missing = [f for f in files if f not in known]
        if missing:
            raise AnnotationError(
                f"{json_path} has no box for {missing[0]} ({len(missing)} of {len(files)} "
                "files have none)"
            )
        return {f: known[f] for f in files}
    return {f: _voc_annotation(Path(boxes_dir), f) for f in files}


def _voc_annotation(boxes_dir: Path, file: str) -> Annotation:
    label, stem = Path(file).parent.name, Path(file).stem
    for candidate in (boxes_dir / label / f"{stem}.xml", boxes_dir / f"{stem}.xml"):
        if candidate.is_file():
            boxes = tuple(box for name, box in read_voc(candidate) if name == label)
            if not boxes:
                raise AnnotationError(f"{candidate} has no box of class {label!r} for {file}")
            return Annotation(file, label, boxes)
    raise AnnotationError(
        f"no box file for {file}: looked for {boxes_dir / label / (stem + '.xml')} and "
        f"{boxes_dir / (stem + '.xml')}"
    )
