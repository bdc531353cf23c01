"""The README's localisation picture: demo-loc's boxes on one unseen shapes image per class.

    .venv/bin/python scripts/localization_figure.py [--store model_store] [--out FILE]

Writes 8 images of the demo test seed (2024, the first of each class) to a temporary folder,
runs ``verydeep evaluate --task localization --draw`` on them (the code of ``/localize``, ranked
by demo-loc's classifier demo-de) and tiles the drawings, two rows of four, into ``--out``
(default docs/images/localize-demo.jpg): the truth in green, the top-1 box in red, the central
crop's box of the true class dashed in blue.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from PIL import Image

from model_store import ModelStore
from service.core.evaluate_localization import evaluate_localization, format_table
from training.shapes import write_shapes

ROOT = Path(__file__).resolve().parents[1]
TEST_SEED = 2024  # scripts/make_demo_store.sh: the seed used for nothing but testing
COLUMNS, GAP = 4, 6


def tile(pictures: list[Image.Image], columns: int = COLUMNS) -> Image.Image:
    """Rows of ``columns`` pictures, each row as tall as its tallest, on white."""
    rows = [pictures[i : i + columns] for i in range(0, len(pictures), columns)]
    width = max(sum(p.width for p in row) + GAP * (len(row) - 1) for row in rows)
    height = sum(max(p.height for p in row) for row in rows) + GAP * (len(rows) - 1)
    sheet = Image.new("RGB", (width, height), "white")
    y = 0
    for row in rows:
        x = 0
        for picture in row:
            sheet.paste(picture, (x, y))
            x += picture.width + GAP
        y += max(p.height for p in row) + GAP
    return sheet


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, default=ROOT / "model_store")
    parser.add_argument("--model", default="demo-loc")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "localize-demo.jpg")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="verydeep-locfig-") as tmp:
        data = write_shapes(Path(tmp) / "test", 1, seed=TEST_SEED, progress=False)
        drawn = Path(tmp) / "drawn"
        row = evaluate_localization(
            ModelStore(args.store), args.model, data, progress=False, draw_dir=drawn
        )
        print(format_table([row]))
        pictures = [Image.open(p).convert("RGB") for p in sorted(drawn.rglob("*.png"))]
        tile(pictures).save(args.out, quality=88, optimize=True)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
