"""``verydeep export``: a checkpoint of our own training as a fully-convolutional store entry;
a localisation checkpoint as a localisation entry (docs/localization.md, "Export")."""

from __future__ import annotations

from pathlib import Path

from model_store import Localization, ModelStore, StoreEntry, sha256_file
from training.checkpoint import load_checkpoint
from training.export import ExportError, export_to_store


def export_checkpoint(
    checkpoint_path: str | Path,
    store: str | Path,
    name: str,
    *,
    test_scales: list[int] | None = None,
    overwrite: bool = False,
    dtype: str = "float32",
    calibration: str | Path | None = None,
    classifier: str | None = None,
) -> StoreEntry:
    """``classifier``: a localisation checkpoint's entry's ``localization.classifier``."""
    checkpoint = load_checkpoint(checkpoint_path)
    localization = None
    if checkpoint.localization is not None:
        localization = Localization(**checkpoint.localization, classifier=classifier)
    elif classifier is not None:
        raise ExportError("--classifier is for a localisation checkpoint; this one classifies")
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
        localization=localization,
    )
