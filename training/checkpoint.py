"""The checkpoint format written by ``verydeep train`` and read by ``verydeep export``.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so it loads with
``torch.load(weights_only=True)`` (never unpickling arbitrary objects)::

    {"format": "verydeep-checkpoint", "format_version": 1,
     "model": {"config": "D", "num_classes": 8, "width": 0.25, "fc_width": 256},
     "labels": [...], "preprocessing": {...}, "train_scale": {"min": 256, "max": 512},
     "state_dict": {...},            # training.vgg.VGG (FC form)
     "training": {...}}              # optional: epoch, optimiser, scheduler, history, RNG states

A localisation net's checkpoint also has ``"localization": {"regression", "tuned"}``
(docs/localization.md, "Training"); its ``model.num_classes`` is then the box regressor's outputs
(4 x K or 4) and ``labels`` the K classes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from model_store import Preprocessing, TrainScale
from training.errors import UserFacingError
from training.vgg import VGG, build_vgg

FORMAT = "verydeep-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(UserFacingError):
    pass


@dataclass
class Checkpoint:
    config: str
    num_classes: int
    width: float
    fc_width: int
    labels: list[str]
    preprocessing: Preprocessing
    train_scale: TrainScale
    state_dict: dict[str, torch.Tensor]
    training: dict[str, Any] = field(default_factory=dict)
    # A localisation net's {"regression", "tuned"} (docs/localization.md); its num_classes is
    # then the regressor's outputs, 4 x K or 4, and labels the K classes.
    localization: dict[str, Any] | None = None

    def build_model(self) -> VGG:
        model = build_vgg(
            self.config, self.num_classes, width=self.width, fc_width=self.fc_width, init=None
        )
        model.load_state_dict(self.state_dict)
        return model

    def to_dict(self) -> dict[str, Any]:
        extra = {} if self.localization is None else {"localization": dict(self.localization)}
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model": {
                "config": self.config,
                "num_classes": self.num_classes,
                "width": self.width,
                "fc_width": self.fc_width,
            },
            "labels": list(self.labels),
            "preprocessing": self.preprocessing.model_dump(mode="json"),
            "train_scale": self.train_scale.model_dump(mode="json"),
            "state_dict": self.state_dict,
            "training": self.training,
            **extra,
        }


def save_checkpoint(checkpoint: Checkpoint, path: str | Path) -> None:
    """Write atomically: a crash mid-save never leaves a truncated checkpoint at ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(checkpoint.to_dict(), tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path) -> Checkpoint:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for a bad or unsafe file
        raise CheckpointError(f"cannot load checkpoint {path}: {err}") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a verydeep checkpoint (no format {FORMAT!r})")
    if raw.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: unknown checkpoint format_version {raw.get('format_version')!r}; "
            f"this verydeep reads {FORMAT_VERSION}"
        )
    try:
        model = raw["model"]
        return Checkpoint(
            config=model["config"],
            num_classes=int(model["num_classes"]),
            width=float(model["width"]),
            fc_width=int(model["fc_width"]),
            labels=list(raw["labels"]),
            preprocessing=Preprocessing.model_validate(raw["preprocessing"]),
            train_scale=TrainScale.model_validate(raw["train_scale"]),
            state_dict=raw["state_dict"],
            training=raw.get("training") or {},
            localization=raw.get("localization"),
        )
    except (KeyError, TypeError, ValueError, ValidationError) as err:
        raise CheckpointError(f"{path}: malformed checkpoint: {err}") from None
