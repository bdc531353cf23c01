"""``verydeep export``: a checkpoint of our own training as a fully-convolutional store entry."""

from __future__ import annotations

from pathlib import Path

from model_store import ModelStore, StoreEntry, sha256_file
from training.checkpoint import load_checkpoint
from training.export import export_to_store


def export_checkpoint(
    checkpoint_path: str | Path,
    store: str | Path,
    name: str,
    *,
    test_scales: list[int] | None = None,
    overwrite: bool = False,
    dtype: str = "float32",
    calibration: str | Path | None = None,
) -> StoreEntry:
    checkpoint = load_checkpoint(checkpoint_path)
    model = checkpoint.build_model()
    return export_to_store(
        model,
        ModelStore(store),
        name,
        labels=checkpoint.labels,
        preprocessing=checkpoint.preprocessing,
        train_scale=checkpoint.train_scale,
        test_scales=test_scales,
        source="training",
        checkpoint_sha256=sha256_file(checkpoint_path),
        metrics=dict(checkpoint.training.get("metrics", {})),
        overwrite=overwrite,
        dtype=dtype,
        calibration=calibration,
    )
