"""Fixtures of the training tests: small shapes folders (written once per session)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.shapes import write_shapes

TRAIN_PER_CLASS = 3  # 24 images
VAL_PER_CLASS = 1  # 8 images


@pytest.fixture(scope="session")
def shapes_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(train, val) ImageFolder roots of the shapes dataset, seeds 0 and 1."""
    root = tmp_path_factory.mktemp("shapes")
    train = write_shapes(root / "train", TRAIN_PER_CLASS, seed=0, workers=1, progress=False)
    val = write_shapes(root / "val", VAL_PER_CLASS, seed=1, workers=1, progress=False)
    return train, val


@pytest.fixture(scope="session")
def two_tone_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(train, val) folders of two easy classes, dark and light noise images of varied sizes:
    a tiny net separates them within a few steps, so a falling loss shows the loop learns."""
    root = tmp_path_factory.mktemp("two-tone")
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 2)):
        for name, (low, high) in (("dark", (0, 90)), ("light", (165, 256))):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                w, h = (int(v) for v in rng.integers(230, 300, size=2))
                pixels = rng.integers(low, high, size=(h, w, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root / "train", root / "val"
