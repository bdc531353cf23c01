"""The paper's Appendix B transfer experiment in miniature (docs/evaluation.md, "Transfer").

Shapes the demo models never saw (``make-shapes --classes``): a small training set and a test
set drawn with another seed. For each model (or ensemble) named, the descriptor of
``verydeep features`` (``service.core.extract.extract``, the code of ``POST /features``) at a
single scale, and over the model's test scales pooled by ``mean`` and by ``stack``; beside them,
the single 224 centre crop's fc7 (what torchvision's ``Resize(256)`` + ``CenterCrop(224)`` gives:
one view, no flip, fc7 from the engine's ``features()`` on that crop), and a baseline of raw
pixels (each image squashed to w x h with 3 x w x h close to the model's descriptor dimension).
Every vector is L2-normalised; one-vs-rest linear SVMs (``training.transfer.transfer``, C by
cross-validation on the training set) are scored on the test set. Prints a Markdown table: method,
dimension, accuracy, mAP (fractions) and seconds (features of both sets plus the SVM), then the
total time.

    .venv/bin/python scripts/transfer_example.py [--models demo-d,demo-de] [--per-class 10]
        [--test-per-class 30] [--classes arrow,crescent,diamond,ellipse,octagon,pentagon]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from model_store import ModelStore  # noqa: E402
from model_store.imaging import decode, rescale, to_input  # noqa: E402
from service.core.extract import extract, open_models, scan  # noqa: E402
from service.core.features import l2_normalised  # noqa: E402
from service.settings import Settings  # noqa: E402
from training.shapes import NEW_CLASSES, write_shapes  # noqa: E402
from training.transfer import transfer  # noqa: E402

DEFAULT_CLASSES = ("arrow", "crescent", "diamond", "ellipse", "octagon", "pentagon")
CROP = 224
CROP_RESIZE = 256  # torchvision's Resize(256) before CenterCrop(224)
SINGLE_SCALE = 256  # the single-scale descriptor's Q


@dataclass(frozen=True)
class Row:
    method: str
    dimension: int
    accuracy: float
    mean_average_precision: float
    seconds: float


def pixel_grid(dimension: int) -> tuple[int, int]:
    """(w, h), w - h in {0, 1}, with 3 x w x h closest to ``dimension``: 7 x 6 (126) for 128,
    9 x 9 (243) for 256."""
    best = min(
        ((w, h) for h in range(1, 64) for w in (h, h + 1)),
        key=lambda wh: (abs(3 * wh[0] * wh[1] - dimension), -wh[0] * wh[1]),
    )
    return best


def _save(path: Path, features: np.ndarray, labels: list[str]) -> Path:
    np.savez(path, features=features.astype(np.float32), labels=np.array(labels))
    return path


def raw_pixels(folder: Path, size: tuple[int, int], out: Path) -> Path:
    """Each image downscaled (area average) to ``size``, flattened, L2-normalised."""
    data = scan(folder)
    vectors = []
    for path in data.files:
        with Image.open(path) as im:
            small = im.convert("RGB").resize(size, Image.Resampling.BOX)
        vectors.append(l2_normalised(np.asarray(small, np.float64).ravel()))
    return _save(out, np.stack(vectors), list(data.labels or []))


def centre_crop_fc7(
    store: ModelStore, spec: str, folder: Path, out: Path, settings: Settings
) -> Path:
    """fc7 of one 224 centre crop of the image rescaled to smallest side 256, per model
    L2-normalised, an ensemble's members concatenated and L2-normalised again (as
    ``service.core.features.describe`` combines them)."""
    models = open_models(store, spec, settings)
    data = scan(folder)
    limits = settings.image_limits()
    vectors = []
    for path in data.files:
        image = decode(
            path.read_bytes(), limits, max_scale=CROP_RESIZE if settings.jpeg_draft else None
        ).image
        scaled = rescale(image, CROP_RESIZE)
        left, top = (scaled.width - CROP) // 2, (scaled.height - CROP) // 2
        crop = scaled.crop((left, top, left + CROP, top + CROP))
        parts = []
        for m in models:
            x = to_input(crop, m.manifest.preprocessing)[None]
            fc7 = m.features(np.ascontiguousarray(x))  # (1, F, 1, 1)
            parts.append(l2_normalised(fc7.reshape(-1).astype(np.float64)))
        vectors.append(parts[0] if len(parts) == 1 else l2_normalised(np.concatenate(parts)))
    return _save(out, np.stack(vectors), list(data.labels or []))


def _timed(make: Callable[[str], Path]) -> tuple[Path, Path, float]:
    start = time.perf_counter()
    train, test = make("train"), make("test")
    return train, test, time.perf_counter() - start


def run(
    store_dir: Path,
    models: list[str],
    classes: list[str],
    train_per_class: int,
    test_per_class: int,
    train_seed: int,
    test_seed: int,
    work: Path,
    *,
    workers: int | None = None,
    progress: bool = False,
    log: Callable[[str], None] = lambda s: None,
) -> list[Row]:
    store, settings = ModelStore(store_dir), Settings()
    data = {
        "train": write_shapes(
            work / "train", train_per_class, train_seed, classes=classes, workers=workers,
            progress=progress,
        ),
        "test": write_shapes(
            work / "test", test_per_class, test_seed, classes=classes, workers=workers,
            progress=progress,
        ),
    }  # fmt: skip
    rows: list[Row] = []

    def score(method: str, train: Path, test: Path, seconds: float) -> None:
        start = time.perf_counter()
        result = transfer(train, test)
        with np.load(train) as f:
            dimension = int(f["features"].shape[1])
        row = Row(
            method,
            dimension,
            result.accuracy,
            result.mean_average_precision,
            seconds + time.perf_counter() - start,
        )
        rows.append(row)
        log(f"{method}: accuracy {row.accuracy:.3f}, mAP {row.mean_average_precision:.3f}")

    dimensions = {}
    for spec in models:
        engines = open_models(store, spec, settings)
        dimensions[spec] = sum(
            int(e.features(np.zeros((1, 3, CROP, CROP), np.float32)).shape[1]) for e in engines
        )
    for dimension in sorted(set(dimensions.values())):
        w, h = pixel_grid(dimension)
        train, test, seconds = _timed(
            lambda split, w=w, h=h: raw_pixels(
                data[split], (w, h), work / f"raw{w}x{h}-{split}.npz"
            )
        )
        score(f"raw pixels {w}x{h}x3", train, test, seconds)
    for spec in models:
        engines = open_models(store, spec, settings)
        scales = sorted({q for e in engines for q in e.manifest.test_scales})
        qs = ",".join(map(str, scales))
        train, test, seconds = _timed(
            lambda split, spec=spec: centre_crop_fc7(
                store, spec, data[split], work / f"{spec}-crop-{split}.npz", settings
            )
        )
        score(f"{spec} centre crop 224 of S={CROP_RESIZE} (torchvision)", train, test, seconds)
        variants = (
            (f"dense Q={SINGLE_SCALE}, flip", [SINGLE_SCALE], "mean"),
            (f"dense Q={{{qs}}}, flip, mean", None, "mean"),
            (f"dense Q={{{qs}}}, flip, stack", None, "stack"),
        )
        for label, q, pool in variants:
            train, test, seconds = _timed(
                lambda split, spec=spec, q=q, pool=pool: extract(
                    store, spec, data[split], work / f"{spec}-{pool}-{q}-{split}.npz",
                    scales=q, pool=pool, settings=settings, progress=progress,
                )
            )  # fmt: skip
            score(f"{spec} {label}", train, test, seconds)
    return rows


def table(rows: list[Row]) -> str:
    lines = [
        "| method | dimension | accuracy | mAP | seconds |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r.method} | {r.dimension} | {r.accuracy:.3f} | {r.mean_average_precision:.3f} | "
        f"{r.seconds:.1f} |"
        for r in rows
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", default=str(ROOT / "model_store"), help="model store")
    p.add_argument("--models", default="demo-d,demo-de", help="models or ensembles, comma list")
    p.add_argument(
        "--classes",
        default=",".join(DEFAULT_CLASSES),
        help=f"shapes classes (new ones: {', '.join(NEW_CLASSES)})",
    )
    p.add_argument("--per-class", type=int, default=10, help="training images per class")
    p.add_argument("--test-per-class", type=int, default=30, help="test images per class")
    p.add_argument("--train-seed", type=int, default=100)
    p.add_argument("--test-seed", type=int, default=101)
    p.add_argument("--work", default=None, help="keep the images and .npz here (default: temp)")
    p.add_argument("--workers", type=int, default=None, help="make-shapes processes")
    p.add_argument("--json", metavar="FILE", help="also write the rows to FILE")
    p.add_argument("--progress", action="store_true", help="progress bars")
    args = p.parse_args(argv)

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        rows = run(
            Path(args.store),
            [m.strip() for m in args.models.split(",") if m.strip()],
            [c.strip() for c in args.classes.split(",") if c.strip()],
            args.per_class,
            args.test_per_class,
            args.train_seed,
            args.test_seed,
            work,
            workers=args.workers,
            progress=args.progress,
            log=lambda s: print(s, file=sys.stderr, flush=True),
        )
    total = time.perf_counter() - start
    print(table(rows))
    print()
    print(f"total {total:.1f} s")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"rows": [r.__dict__ for r in rows], "total_seconds": total}, indent=2)
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
