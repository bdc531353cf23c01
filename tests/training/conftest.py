"""Fixtures of the training tests: small shapes folders (written once per session)."""

from __future__ import annotations

from pathlib import Path

import pytest

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
