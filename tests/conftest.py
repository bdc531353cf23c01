"""Shared fixtures: tiny VGG models exported into temporary stores (random weights)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from model_store import ModelStore, Preprocessing, StoreEntry, TrainScale
from training.export import export_to_store
from training.vgg import VGG, build_vgg

TINY_WIDTH = 1 / 16
TINY_FC = 64
TINY_LABELS = ["circle", "square", "triangle", "star", "cross"]
TINY_PREPROCESSING = Preprocessing(mean=(120.0, 115.0, 100.0), std=(60.0, 60.0, 60.0))


def tiny_vgg(config: str = "D", seed: int = 0, num_classes: int = len(TINY_LABELS)) -> VGG:
    torch.manual_seed(seed)
    return build_vgg(config, num_classes, width=TINY_WIDTH, fc_width=TINY_FC, init="glorot").eval()


@pytest.fixture
def make_entry(tmp_path: Path) -> Callable[..., StoreEntry]:
    """``make_entry(name, config="D", seed=0, store=None, train_scale=(256, 512))``."""

    def make(
        name: str,
        config: str = "D",
        seed: int = 0,
        store: ModelStore | None = None,
        train_scale: tuple[int, int] = (256, 512),
    ) -> StoreEntry:
        store = store or ModelStore(tmp_path / "store")
        return export_to_store(
            tiny_vgg(config, seed),
            store,
            name,
            labels=TINY_LABELS,
            preprocessing=TINY_PREPROCESSING,
            train_scale=TrainScale(min=train_scale[0], max=train_scale[1]),
            source="test",
        )

    return make


@pytest.fixture
def tiny_store(make_entry: Callable[..., StoreEntry], tmp_path: Path) -> ModelStore:
    """A store with ``tiny-d`` (config D) and ``tiny-e`` (config E) and the ensemble ``tiny-de``."""
    store = ModelStore(tmp_path / "store")
    make_entry("tiny-d", "D", seed=1, store=store)
    make_entry("tiny-e", "E", seed=2, store=store)
    store.write_ensembles({"tiny-de": ["tiny-d", "tiny-e"]})
    return store
