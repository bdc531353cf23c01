"""Offline localisation evaluation (paper Appendix A, Tables 8 and 9): ``verydeep evaluate
--task localization``.

Two protocols over a labelled image folder whose boxes come from ``annotations.json`` or
ILSVRC's VOC XML files (``model_store.annotations.folder_annotations``):

- the fully-fledged one (Table 9): every image goes through the very work of a ``/localize``
  request (``service.core.localize_request.localize_bytes``: decoded with the service's limits,
  its checks, ``service.core.localize.localize``), at the same scales, flip and classifier. A
  guess is right when its class is the image's and its box has IoU >= 0.5 with one of the
  image's truth boxes (``model_store.boxes.iou``): the top-1 error counts images whose first
  guess is wrong, the top-5 error images whose five guesses all are;
- the central crop (Table 8), which factors classification out: the image rescaled to the
  localisation net's single test scale (Q = S, or (S_min + S_max) / 2), its central 224 x 224
  crop through the net, and the box of the image's class (PCR) or the single box (SCR); an error
  when its IoU with every truth box is under 0.5. Table 8 compares single nets: for a comma list
  of nets (their box sets merged in the first protocol) it is the first net's.

The folder is read and matched to the labels as ``verydeep evaluate`` reads it
(``service.core.evaluate.scan_folder``), the models opened and verified as the service opens
them (``open_engine``), ``--model`` and ``--classify-with`` read as ``/localize`` reads them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from model_store import ModelStore
from model_store import boxes as box_ops
from model_store.annotations import AnnotationError, folder_annotations
from model_store.imaging import ImageError, decode
from model_store.progress import progress_bar
from service.core import box_drawing
from service.core.engine import Engine
from service.core.errors import ServiceError
from service.core.evaluate import (
    ClassMatch,
    EvaluationError,
    ScaleChoice,
    _open,
    class_balanced,
    parse_option,
    scan_folder,
    store_ensembles,
    text_table,
)
from service.core.localize import Localized, cell_boxes
from service.core.localize_request import LocalizeRequest, localize_bytes
from service.core.protocol import CROP, ScaledImages
from service.core.resolve import ModelSpec, check_labels
from service.settings import Settings

HIT_IOU = 0.5
"""ILSVRC's criterion: a box is right when its IoU with a truth box is at least this."""


@dataclass
class LocalizationRow:
    """The result of one localisation net ranked by one classifier."""

    model: str
    classified_by: str
    members: list[str]
    scales: list[int]
    flip: bool
    central_scale: int
    localizers: list[tuple[str, list[int]]] = field(default_factory=list)
    images: int = 0
    top1_errors: int = 0
    top5_errors: int = 0
    central_errors: int = 0
    seconds: float = 0.0

    def add(self, hits: Sequence[bool], central_right: bool, seconds: float) -> None:
        """One image: whether each guess of the dense protocol was right (best first), and
        whether the central crop's box was."""
        self.images += 1
        self.top1_errors += not hits[0]
        self.top5_errors += not any(hits[:5])
        self.central_errors += not central_right
        self.seconds += seconds

    def _rate(self, count: int) -> float:
        return count / self.images if self.images else float("nan")

    @property
    def top1_error(self) -> float:
        return self._rate(self.top1_errors)

    @property
    def top5_error(self) -> float:
        return self._rate(self.top5_errors)

    @property
    def central_error(self) -> float:
        return self._rate(self.central_errors)

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("nan")

    def as_json(self) -> dict[str, object]:
        return {
            "model": self.model,
            "classified_by": self.classified_by,
            "members": self.members,
            "task": "localization",
            "scales": self.scales,
            "flip": self.flip,
            "images": self.images,
            "top1_localization_error": self.top1_error,
            "top5_localization_error": self.top5_error,
            "localizers": [{"model": n, "scales": qs} for n, qs in self.localizers],
            "central_crop_model": self.localizers[0][0] if self.localizers else self.model,
            "central_crop_scale": self.central_scale,
            "central_crop_error": self.central_error,
            "images_per_s": self.images_per_s,
        }


def best_iou(box: Sequence[float], truths: Sequence[Sequence[float]]) -> float:
    """The largest IoU of ``box`` with any of ``truths``."""
    return float(np.max(box_ops.iou(np.asarray(box)[None], np.asarray(truths))))


def guess_is_right(index: int, box: Sequence[float], label: int, truths) -> bool:
    """ILSVRC's rule: the right class, and a box of IoU >= 0.5 with a truth box."""
    return index == label and best_iou(box, truths) >= HIT_IOU


def central_crop_box(
    locnet: Engine, inputs: ScaledImages, size: tuple[int, int], label: int, q: int
) -> np.ndarray:
    """Table 8's protocol: the box of class ``label`` (PCR) or the single box (SCR) that the net
    regresses on the central 224 crop of the image rescaled to ``q``, in the image's pixels."""
    x = inputs.get(q, locnet)
    _, height, width = x.shape
    top, left = (height - CROP) // 2, (width - CROP) // 2
    crop = np.ascontiguousarray(x[None, :, top : top + CROP, left : left + CROP])
    box_map = locnet.scores(crop)[0]
    boxes = cell_boxes(box_map, label, locnet.manifest, (width, height), size, False, (left, top))
    return boxes[0]


@dataclass(frozen=True)
class _Plan:
    """What runs: the localisation nets (``name`` as given), the classifier and its members,
    and the scales asked for (None: each net's test scales)."""

    name: str
    locnets: tuple[Engine, ...]
    classifier: str
    members: tuple[Engine, ...]
    scales: list[int] | None

    @property
    def locnet(self) -> Engine:
        """The net of the central-crop protocol (Table 8 compares single nets): the first."""
        return self.locnets[0]


def _plan(
    store: ModelStore,
    model: str,
    classify_with: str | None,
    scales: ScaleChoice,
    settings: Settings,
) -> _Plan:
    ensembles = store_ensembles(store)
    named = parse_option(model, ensembles)
    if named.kind == "ensemble":
        raise EvaluationError(
            f"--model: {model!r} is an ensemble of classification models; --task localization "
            "takes localization models, one or a comma list"
        )
    locnets = tuple(_open(store, name, settings, ensembles) for name in named.members)
    for net in locnets:
        if net.manifest.localization is None:
            raise EvaluationError(
                f"--model: {net.name!r} is a classification model; --task localization takes "
                "localization models (and the classifier as --classify-with)"
            )
    parsed = _classifier(store, named.name, locnets, classify_with, ensembles)
    members = tuple(_open(store, name, settings, ensembles) for name in parsed.members)
    for m in members:
        if m.manifest.task == "localization":
            raise EvaluationError(f"--classify-with: {m.name!r} is a localization model")
    try:
        check_labels(ModelSpec(parsed.name, (), "list"), [*locnets, *members])
    except ServiceError:
        raise EvaluationError(
            f"--classify-with: {parsed.name!r} has other labels than {named.name!r}"
        ) from None
    return _Plan(named.name, locnets, parsed.name, members, _scales(scales, locnets))


def _classifier(
    store: ModelStore,
    name: str,
    locnets: Sequence[Engine],
    classify_with: str | None,
    ensembles: dict,
) -> ModelSpec:
    """``--classify-with``, else the classifier the nets' manifests name (the same for all)."""
    named = {net.manifest.localization.classifier for net in locnets}  # type: ignore[union-attr]
    if classify_with is None and len(named) > 1:
        raise EvaluationError(
            f"the localization models of {name!r} name different classifiers; pass "
            "--classify-with NAME"
        )
    spec = classify_with or next(iter(named))
    if spec is None:
        raise EvaluationError(
            f"{name!r} names no classifier in its manifest; pass --classify-with NAME"
        )
    parsed = parse_option(spec, ensembles, "classify-with")
    if classify_with is None and not set(parsed.members) <= set(store.names()):
        raise EvaluationError(
            f"the classifier of {name!r}, {spec!r}, is not in {store.root}; pass "
            "--classify-with NAME"
        )
    return parsed


def _scales(scales: ScaleChoice, locnets: Sequence[Engine]) -> list[int] | None:
    """The scales every net runs at (None: each its own test scales)."""
    if scales == "default":
        return None
    if scales == "single":
        single = {net.manifest.train_scale.single_test_scale() for net in locnets}
        if len(single) > 1:
            raise EvaluationError(
                "--scales single: the localization models were trained at different scales; "
                "give the scales"
            )
        return sorted(single)
    return list(scales)


ImageHook = Callable[[Path, Localized, np.ndarray], None]


def evaluate_localization(
    store: ModelStore,
    model: str,
    data: str | Path,
    *,
    classify_with: str | None = None,
    boxes_dir: str | Path | None = None,
    scales: ScaleChoice = "default",
    flip: bool = True,
    limit: int | None = None,
    class_match: ClassMatch = "name",
    settings: Settings | None = None,
    progress: bool = True,
    on_image: ImageHook | None = None,
    draw_dir: str | Path | None = None,
) -> LocalizationRow:
    """Both protocols for ``model`` ranked by ``classify_with`` (default: its manifest's
    classifier) on ``data``; ``on_image(path, localized, central_box)`` sees every image.
    ``draw_dir``: draw each image's truth, top-1 and central-crop boxes into
    ``draw_dir/<class>/<image stem>.png`` (``box_drawing``)."""
    settings = settings or Settings()
    if limit is not None and limit < 1:
        raise EvaluationError(f"--limit must be at least 1, not {limit}")
    run = _plan(store, model, classify_with, scales, settings)
    manifest = run.locnet.manifest
    images, files, truth = _labelled_boxes(Path(data), manifest.labels, class_match, limit,
                                           boxes_dir)  # fmt: skip
    central_q = manifest.train_scale.single_test_scale()
    k = min(5, manifest.num_classes)
    job = LocalizeRequest(run.locnets, run.members, run.scales, flip, k)
    row = LocalizationRow(
        model=run.name,
        classified_by=run.classifier,
        members=[m.name for m in run.members],
        scales=job.every_scale(),
        flip=flip,
        central_scale=central_q,
        localizers=[(net.name, qs) for net, qs in job.plan()],
    )
    bar = progress_bar(list(zip(images, files, strict=True)), desc="evaluate", unit="img",
                       enabled=progress)  # fmt: skip
    for item, file in bar:
        started = time.perf_counter()
        seen = _both_protocols(run, job, item.path, item.label, central_q, settings)
        boxes = truth[file].boxes
        hits = [guess_is_right(p.index, p.box, item.label, boxes) for p in seen.result.predictions]
        central_right = best_iou(seen.central_box, boxes) >= HIT_IOU
        row.add(hits, central_right, time.perf_counter() - started)
        if on_image is not None:
            on_image(item.path, seen.result, seen.central_box)
        if draw_dir is not None:
            _draw(Path(draw_dir), file, seen, boxes, hits[0], manifest.labels)
        bar.set_postfix_str(
            f"top-5 loc err {row.top5_error:.1%} central crop err {row.central_error:.1%}",
            refresh=False,  # shown at the bar's next redraw: one log line per image otherwise
        )
    return row


def _labelled_boxes(
    root: Path,
    labels: Sequence[str],
    class_match: ClassMatch,
    limit: int | None,
    boxes_dir: str | Path | None,
) -> tuple[list, list[str], dict]:
    """The folder's images as ``verydeep evaluate`` lists them (``limit`` of them, in turn from
    each class), their paths relative to ``root``, and their truth boxes."""
    images = scan_folder(root, labels, class_match)
    if limit is not None:
        images = class_balanced(images)[:limit]
    files = [item.path.relative_to(root).as_posix() for item in images]
    try:
        return images, files, folder_annotations(root, files, boxes_dir)
    except AnnotationError as err:
        raise EvaluationError(str(err)) from None


@dataclass(frozen=True)
class _Seen:
    """One image through both protocols: the decoded image (maybe a draft of the file), the
    file's size, the dense answer and the central crop's box of the true class."""

    image: Image.Image
    size: tuple[int, int]
    result: Localized
    central_box: np.ndarray


def _both_protocols(
    run: _Plan,
    job: LocalizeRequest,
    path: Path,
    label: int,
    central_q: int,
    settings: Settings,
) -> _Seen:
    """``path`` through ``/localize``'s own work (``localize_bytes``: decoding, its checks, the
    procedure), then the first net's central crop of the same decoding (of a finer one where a
    JPEG draft was decoded for smaller scales than the crop's)."""
    try:
        data = path.read_bytes()
        outcome = localize_bytes(data, job, settings, threading.Event())
        decoded = outcome.decoded
        if settings.jpeg_draft and central_q > max(job.every_scale()):
            decoded = decode(data, settings.image_limits(), max_scale=central_q)
    except (OSError, ImageError) as err:
        raise EvaluationError(f"{path}: {err}") from None
    except ServiceError as err:
        raise EvaluationError(f"{path}: {err.message}") from None
    size = (outcome.decoded.width, outcome.decoded.height)
    central_box = central_crop_box(run.locnet, ScaledImages(decoded.image), size, label, central_q)
    return _Seen(outcome.decoded.image, size, outcome.result, central_box)


def _draw(
    out: Path,
    file: str,
    seen: _Seen,
    truths: Sequence[Sequence[float]],
    right: bool,
    labels: Sequence[str],
) -> None:
    """The image's drawing (``box_drawing``): its boxes are in the file's pixels."""
    first = seen.result.predictions[0]
    caption = (
        f"{labels[first.index]} {first.probability:.2f}, box {first.box_score:.2f}"
        f" ({'right' if right else 'wrong'})"
    )
    picture = box_drawing.draw_boxes(seen.image, truths, first.box, caption, right=right,
                                     central=seen.central_box, frame=seen.size)  # fmt: skip
    box_drawing.write_box_drawing(out, file, picture)


def format_table(rows: Sequence[LocalizationRow]) -> str:
    """The rows as the paper's Tables 8 and 9: errors in %."""
    header = (
        "ConvNet",
        "classified by",
        "test (Q)",
        "flip",
        "images",
        "top-1 loc err (%)",
        "top-5 loc err (%)",
        "central crop",
        "crop err (%)",
        "img/s",
    )
    body = [
        (
            r.model,
            r.classified_by,
            ",".join(str(q) for q in r.scales),
            "yes" if r.flip else "no",
            str(r.images),
            f"{100 * r.top1_error:.1f}",
            f"{100 * r.top5_error:.1f}",
            f"Q={r.central_scale}",
            f"{100 * r.central_error:.1f}",
            f"{r.images_per_s:.2f}",
        )
        for r in rows
    ]
    return text_table(header, body, numeric={4, 5, 6, 8, 9})
