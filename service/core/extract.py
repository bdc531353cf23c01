"""``verydeep features``: the paper's descriptor (``service.core.features``) of every image of a
folder, by the code that answers ``POST /features`` (docs/evaluation.md, "Features of a folder").

The folder is an ImageFolder layout (``<class>/<image>``: the class names become ``labels``) or
flat (images directly inside: no labels). Images are decoded and rescaled by a small pool of
threads ahead of the network (Pillow releases the GIL), in the file order, so the network never
waits for the next image's CPU work. The result is a ``.npz``: ``features`` ``(N, D)`` float32,
``files`` (paths relative to the folder), and with a class layout ``labels`` and ``classes``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model_store import ModelStore
from model_store.imaging import ImageError, decode
from model_store.progress import progress_bar
from service.core.engine import Engine, open_engine
from service.core.errors import ServiceError
from service.core.evaluate import (
    IMAGE_EXTENSIONS,
    EvaluationError,
    parse_option,
    store_ensembles,
)
from service.core.features import Descriptor, Pool, describe
from service.settings import Settings

PREFETCH = 2
"""Images decoded ahead of the one the network is on."""


@dataclass(frozen=True)
class Folder:
    root: Path
    files: list[Path]
    labels: list[str] | None


def scan(root: str | Path) -> Folder:
    """The images of ``root``: its class sub-folders' (sorted), or its own when it has none."""
    root = Path(root)
    if not root.is_dir():
        raise EvaluationError(f"no data folder at {root}")
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if classes:
        pairs = [(f, c.name) for c in classes for f in sorted(c.rglob("*")) if _image(f)]
        files, labels = [f for f, _ in pairs], [label for _, label in pairs]
    else:
        files, labels = [f for f in sorted(root.iterdir()) if _image(f)], None
    if not files:
        raise EvaluationError(f"{root} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    return Folder(root, files, labels)


def _image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def open_models(store: ModelStore, spec: str, settings: Settings) -> list[Engine]:
    """The models ``spec`` names, opened as the service opens them, each with the output."""
    members = parse_option(spec, store_ensembles(store)).members
    engines = []
    for name in members:
        if name not in store.names():
            raise EvaluationError(f"unknown model {name!r} in {store.root}")
        try:
            engine = open_engine(store, name, settings.engine_options())
            engine.check_features()
        except ServiceError as err:
            raise EvaluationError(err.message) from None
        except Exception as err:  # a broken entry, or an ONNX file onnxruntime refuses
            raise EvaluationError(f"cannot load {name!r}: {err}") from None
        engines.append(engine)
    return engines


def extract(
    store: ModelStore,
    spec: str,
    data: str | Path,
    out: str | Path,
    *,
    scales: Sequence[int] | None = None,
    flip: bool = True,
    pool: Pool = "mean",
    settings: Settings | None = None,
    progress: bool = True,
) -> Path:
    """Write the descriptors of every image of ``data`` to ``out`` (``.npz``); returns it."""
    settings = settings or Settings()
    models = open_models(store, spec, settings)
    folder = scan(data)
    vectors = [
        descriptor.vector
        for descriptor in progress_bar(
            _descriptors(folder, models, scales, flip, pool, settings),
            total=len(folder.files),
            desc="features",
            unit="img",
            enabled=progress,
        )
    ]
    arrays: dict[str, np.ndarray] = {
        "features": np.stack(vectors).astype(np.float32),
        "files": np.array([f.relative_to(folder.root).as_posix() for f in folder.files]),
    }
    if folder.labels is not None:
        arrays["labels"] = np.array(folder.labels)
        arrays["classes"] = np.array(sorted(set(folder.labels)))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, **arrays)
    return out


def _descriptors(
    folder: Folder,
    models: list[Engine],
    scales: Sequence[int] | None,
    flip: bool,
    pool: Pool,
    settings: Settings,
) -> Iterator[Descriptor]:
    limits = settings.image_limits()
    largest = max(q for m in models for q in (scales or m.manifest.test_scales))
    draft = largest if settings.jpeg_draft else None

    def load(path: Path):  # -> PIL image, decoded and converted off the main thread
        try:
            return decode(path.read_bytes(), limits, max_scale=draft).image
        except (OSError, ImageError) as err:
            raise EvaluationError(f"{path}: {err}") from None

    with ThreadPoolExecutor(PREFETCH) as pool_threads:
        pending = [pool_threads.submit(load, p) for p in folder.files[:PREFETCH]]
        for i in range(len(folder.files)):
            image = pending.pop(0).result()
            if i + PREFETCH < len(folder.files):
                pending.append(pool_threads.submit(load, folder.files[i + PREFETCH]))
            yield describe(models, image, scales, flip, pool)
