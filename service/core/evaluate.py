"""Offline evaluation (paper Tables 3-6): top-1 and top-5 error on a labelled image folder.

``verydeep evaluate`` reads what ``POST /classify`` reads the way it reads it: ``--model`` with
the API's model resolver (``service.core.resolve``), ``--scales`` with its scales parser
(``model_store.scales``), each model opened and verified by ``open_engine`` as the registry opens
it. Every image goes through the very functions ``/classify`` runs: ``imaging.decode`` with the
service's limits, then ``protocol.model_posterior`` per model and method, and the ensemble as the
mean of its members' posteriors. Each image is decoded once per run and its rescaled inputs are
shared by every model; each model's views of one image at one scale are one batched call.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from model_store import Manifest, ModelStore, StoreError
from model_store.imaging import ImageError, decode
from model_store.progress import progress_bar
from model_store.scales import ScalesError
from model_store.scales import parse_scales as parse_scales_list
from service.core import heatmap
from service.core.engine import Engine, open_engine
from service.core.errors import ServiceError
from service.core.protocol import METHODS, Method, ScaledImages, model_posterior
from service.core.resolve import ModelSpec, check_labels, parse_spec
from service.settings import Settings

# torchvision.datasets.folder.IMG_EXTENSIONS, so a folder reads as ImageFolder reads it.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
ClassMatch = Literal["name", "index"]
ScaleChoice = Literal["default", "single"] | list[int]


class EvaluationError(ValueError):
    """The request cannot be evaluated as given; the message says why."""


def parse_scales(text: str, max_scale: int) -> ScaleChoice:
    """``--scales``: "default", "single" or a list of Q as ``/classify`` reads ``scales``
    (``model_store.scales``)."""
    if text in ("default", "single"):
        return text  # type: ignore[return-value]
    try:
        return parse_scales_list(text, max_scale=max_scale)
    except ScalesError as err:
        raise EvaluationError(f"--scales: {err} (or 'default', 'single')") from None


@dataclass(frozen=True)
class LabelledImage:
    path: Path
    label: int


def scan_folder(
    root: str | Path, labels: Sequence[str], match: ClassMatch = "name"
) -> list[LabelledImage]:
    """The images of an ImageFolder-layout directory with the index of their class's label.

    ``match="name"``: each class folder is named by one of the model's labels. ``"index"``: the
    sorted folder names are the classes in label order (ILSVRC's synset folders).
    """
    root = Path(root)
    if not root.is_dir():
        raise EvaluationError(f"no data folder at {root}")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise EvaluationError(f"{root} has no class folders (expected <data>/<class>/<image>)")
    if match == "index":
        if len(folders) != len(labels):
            raise EvaluationError(
                f"{root} has {len(folders)} class folders; the model has {len(labels)} classes"
            )
        index = {folder.name: i for i, folder in enumerate(folders)}
    else:
        positions = {label: i for i, label in enumerate(labels)}
        unknown = [f.name for f in folders if f.name not in positions]
        if unknown:
            shown = ", ".join(repr(u) for u in unknown[:5])
            raise EvaluationError(
                f"{len(unknown)} class folder(s) of {root} are not labels of the model: {shown}"
                f"{' ...' if len(unknown) > 5 else ''} (labels: {', '.join(labels[:8])}"
                f"{' ...' if len(labels) > 8 else ''})"
            )
        index = {f.name: positions[f.name] for f in folders}
    images = [
        LabelledImage(path, index[folder.name])
        for folder in folders
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS
    ]
    if not images:
        raise EvaluationError(f"{root} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    return images


def class_balanced(images: Sequence[LabelledImage]) -> list[LabelledImage]:
    """The images taken in turn from each class (the first of every class, then the second...),
    so that any prefix, such as ``--limit N``, covers the classes evenly."""
    rank: dict[int, int] = {}
    keyed = []
    for position, item in enumerate(images):
        rank[item.label] = rank.get(item.label, -1) + 1
        keyed.append((rank[item.label], position, item))
    return [item for _, _, item in sorted(keyed, key=lambda k: k[:2])]


@dataclass
class Row:
    """One line of the result table: a model or ensemble under one method and set of scales."""

    model: str
    members: list[str]
    method: Method
    scales: list[int]
    flip: bool
    train_scales: list[str]
    images: int = 0
    top1_errors: int = 0
    top5_errors: int = 0
    seconds: float = 0.0

    @property
    def top1_error(self) -> float:
        return self.top1_errors / self.images if self.images else float("nan")

    @property
    def top5_error(self) -> float:
        return self.top5_errors / self.images if self.images else float("nan")

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("nan")

    def record(self, posterior: np.ndarray, label: int, seconds: float) -> None:
        rank = int(np.sum(posterior > posterior[label]))
        self.images += 1
        self.top1_errors += rank >= 1
        self.top5_errors += rank >= 5
        self.seconds += seconds

    def as_json(self) -> dict[str, object]:
        return {
            "model": self.model,
            "members": self.members,
            "method": self.method,
            "scales": self.scales,
            "flip": self.flip,
            "images": self.images,
            "top1_error": self.top1_error,
            "top5_error": self.top5_error,
            "images_per_s": self.images_per_s,
        }


@dataclass
class Plan:
    """What to run: the engines, each one's scales, the rows and which posteriors feed them."""

    engines: dict[str, Engine]
    scales: dict[str, list[int]]
    methods: list[Method]
    flip: bool
    groups: list[tuple[str, list[str]]] = field(default_factory=list)

    @property
    def largest_scale(self) -> int:
        return max(q for qs in self.scales.values() for q in qs)


def train_scale_text(manifest: Manifest) -> str:
    s = manifest.train_scale
    return str(s.min) if s.fixed else f"[{s.min};{s.max}]"


def report_groups(parsed: ModelSpec) -> list[tuple[str, list[str]]]:
    """The groups to report for ``--model``: each model alone, and the ensemble when there are
    several (a named ensemble counts as several: its members and itself)."""
    groups = [(m, [m]) for m in parsed.members]
    if len(parsed.members) > 1:
        groups.append((parsed.name, list(parsed.members)))
    return groups


def plan(
    store: ModelStore,
    spec: str,
    *,
    methods: Sequence[Method],
    scales: ScaleChoice = "default",
    flip: bool = True,
    settings: Settings | None = None,
) -> Plan:
    settings = settings or Settings()
    ensembles = store_ensembles(store)
    parsed = parse_option(spec, ensembles)
    engines = {name: _open(store, name, settings, ensembles) for name in parsed.members}
    for name, engine in engines.items():
        if engine.manifest.task == "localization":
            raise EvaluationError(
                f"{name!r} is a localization model: evaluate it with --task localization"
            )
    try:
        check_labels(parsed, list(engines.values()))
    except ServiceError:
        raise EvaluationError("the models have different labels; they cannot be compared") from None
    chosen: dict[str, list[int]] = {}
    for name, engine in engines.items():
        if scales == "default":
            chosen[name] = list(engine.manifest.test_scales)
        elif scales == "single":
            chosen[name] = [engine.manifest.train_scale.single_test_scale()]
        else:
            chosen[name] = list(scales)
    return Plan(engines, chosen, list(methods), flip, report_groups(parsed))


def store_ensembles(store: ModelStore) -> dict[str, list[str]]:
    """The store's named ensembles; none when ``ensembles.json`` is unreadable (the models
    themselves still evaluate)."""
    try:
        return store.ensembles()
    except StoreError:
        return {}


def parse_option(spec: str, ensembles: dict[str, list[str]], option: str = "model") -> ModelSpec:
    """``spec`` read as ``/classify`` reads ``model`` (``service.core.resolve``); a malformed one
    is an EvaluationError naming ``--option``."""
    try:
        return parse_spec(spec, ensembles)
    except ServiceError as err:
        raise EvaluationError(f"--{option}: {err.message.removeprefix('model: ')}") from None


def _open(
    store: ModelStore, name: str, settings: Settings, ensembles: dict[str, list[str]]
) -> Engine:
    """The verified engine of ``name``, opened as the service opens it (``open_engine``)."""
    if name not in store.names():
        known = ", ".join(store.names() + sorted(ensembles)) or "none"
        raise EvaluationError(f"unknown model {name!r} in {store.root} (known: {known})")
    try:
        return open_engine(store, name, settings.engine_options())
    except Exception as err:  # a broken entry, or an ONNX file onnxruntime refuses
        raise EvaluationError(f"cannot load {name!r}: {err}") from None


def evaluate(
    store: ModelStore,
    spec: str,
    data: str | Path,
    *,
    methods: Sequence[Method] = ("dense",),
    scales: ScaleChoice = "default",
    flip: bool = True,
    limit: int | None = None,
    class_match: ClassMatch = "name",
    settings: Settings | None = None,
    progress: bool = True,
    on_image: Callable[[Path, dict[tuple[str, Method], np.ndarray]], None] | None = None,
    maps_dir: str | Path | None = None,
) -> list[Row]:
    """Evaluate ``spec`` (``--model``) on ``data``; one row per (model or ensemble, method).
    ``maps_dir``: write each image's heatmaps of its true and predicted class per model
    (``write_heatmaps``)."""
    settings = settings or Settings()
    for method in methods:
        if method not in METHODS:
            raise EvaluationError(f"unknown method {method!r}; use {', '.join(METHODS)} or all")
    if limit is not None and limit < 1:
        raise EvaluationError(f"--limit must be at least 1, not {limit}")
    if maps_dir is not None and not {"dense", "combined"} & set(methods):
        raise EvaluationError("--maps draws dense score maps: use --method dense, combined or all")
    run = plan(store, spec, methods=methods, scales=scales, flip=flip, settings=settings)
    first = next(iter(run.engines.values())).manifest
    images = scan_folder(data, first.labels, class_match)
    if limit is not None:
        images = class_balanced(images)[:limit]
    rows = _rows(run)
    limits = settings.image_limits()
    draft_q = run.largest_scale if settings.jpeg_draft else None
    watched = rows[(run.groups[-1][0], run.methods[0])]
    bar = progress_bar(images, desc="evaluate", unit="img", enabled=progress)
    for item in bar:
        try:
            decoded = decode(item.path.read_bytes(), limits, max_scale=draft_q)
        except (OSError, ImageError) as err:
            raise EvaluationError(f"{item.path}: {err}") from None
        maps: dict[str, dict[int, np.ndarray]] | None = {} if maps_dir is not None else None
        posteriors, seconds = _model_posteriors(run, decoded.image, maps)
        if maps:
            write_heatmaps(Path(maps_dir), item, decoded.image, maps, posteriors, first.labels)
        for (group, method), row in rows.items():
            members = row.members
            posterior = np.mean([posteriors[(m, method)] for m in members], axis=0)
            row.record(posterior, item.label, sum(seconds[(m, method)] for m in members))
            if len(members) > 1:
                posteriors[(group, method)] = posterior
        if on_image is not None:
            on_image(item.path, posteriors)
        bar.set_postfix_str(
            f"{watched.model} {watched.method} top-1 err {watched.top1_error:.1%}",
            refresh=False,  # shown at the bar's next redraw: one log line per image otherwise
        )
    return list(rows.values())


def _rows(run: Plan) -> dict[tuple[str, Method], Row]:
    return {
        (name, method): Row(
            model=name,
            members=members,
            method=method,
            scales=sorted({q for m in members for q in run.scales[m]}),
            flip=run.flip,
            train_scales=sorted({train_scale_text(run.engines[m].manifest) for m in members}),
        )
        for name, members in run.groups
        for method in run.methods
    }


Scores = dict[tuple[str, Method], np.ndarray]


def _model_posteriors(
    run: Plan, image: Image.Image, maps: dict[str, dict[int, np.ndarray]] | None = None
) -> tuple[Scores, dict[tuple[str, Method], float]]:
    """Each model's posterior of ``image`` by each method of the run, and the seconds it took;
    ``combined`` is the mean of the dense and multi-crop posteriors, computed once each. With
    ``maps``, each model's dense score maps are put in it (by model name)."""
    computed = sorted(
        {p for m in run.methods for p in (("dense", "multicrop") if m == "combined" else (m,))},
        key=METHODS.index,
    )
    cache = ScaledImages(image)
    posteriors: Scores = {}
    seconds: dict[tuple[str, Method], float] = {}
    for name, engine in run.engines.items():
        for method in computed:
            start = time.perf_counter()
            keep = maps is not None and method == "dense"
            result = model_posterior(
                engine, image, run.scales[name], run.flip, method, cache=cache, keep_maps=keep
            )
            seconds[(name, method)] = time.perf_counter() - start
            posteriors[(name, method)] = result.posterior
            if keep and result.maps is not None:
                maps[name] = result.maps
        if "combined" in run.methods:
            parts = [(name, "dense"), (name, "multicrop")]
            posteriors[(name, "combined")] = np.mean([posteriors[p] for p in parts], axis=0)
            seconds[(name, "combined")] = sum(seconds[p] for p in parts)
    return posteriors, seconds


def write_heatmaps(
    out: Path,
    item: LabelledImage,
    image: Image.Image,
    maps: dict[str, dict[int, np.ndarray]],
    posteriors: Scores,
    labels: Sequence[str],
) -> None:
    """``out/<model>/<true label>/<image stem>.png``: the image with the heat of its true class
    beside that of the model's top-1 (dense, over the run's scales), for looking at failures;
    when the top-1 is right, beside the runner-up's, for looking at confusions."""
    size = heatmap.preview_size(image.size)
    for name, model_maps in maps.items():
        posterior = posteriors[(name, "dense")]
        first, second = (int(i) for i in np.argsort(-posterior, kind="stable")[:2])
        other = ("top-1", first) if first != item.label else ("2nd", second)
        panels = [
            heatmap.overlay(
                image,
                heatmap.class_heat(model_maps, cls, image.size, size),
                f"{what}: {labels[cls]} {posterior[cls]:.2f}",
            )
            for what, cls in (("true", item.label), other)
        ]
        path = out / name / labels[item.label] / f"{item.path.stem}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        heatmap.side_by_side(panels).save(path)


def format_table(rows: Sequence[Row]) -> str:
    """The rows laid out like the paper's tables: train scale S, test scales Q, errors in %."""
    header = (
        "ConvNet",
        "train (S)",
        "test (Q)",
        "method",
        "flip",
        "images",
        "top-1 err (%)",
        "top-5 err (%)",
        "img/s",
    )
    body = [
        (
            r.model,
            ", ".join(r.train_scales),
            ",".join(str(q) for q in r.scales),
            r.method,
            "yes" if r.flip else "no",
            str(r.images),
            f"{100 * r.top1_error:.1f}",
            f"{100 * r.top5_error:.1f}",
            f"{r.images_per_s:.2f}",
        )
        for r in rows
    ]
    return text_table(header, body, numeric={5, 6, 7, 8})


def text_table(header: Sequence[str], body: Sequence[Sequence[str]], numeric: set[int]) -> str:
    """``header`` over a rule and ``body``, columns as wide as their widest cell, the
    ``numeric`` ones right-aligned (the tables of ``verydeep evaluate``)."""
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def fmt(line: Sequence[str]) -> str:
        cells = [
            c.rjust(w) if i in numeric else c.ljust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(header), rule, *(fmt(line) for line in body)])


def write_json(rows: Sequence[Any], path: str | Path) -> None:
    """``{"results": [row.as_json(), ...]}``, the ``--json`` file of ``verydeep evaluate``."""
    Path(path).write_text(json.dumps({"results": [r.as_json() for r in rows]}, indent=2) + "\n")
