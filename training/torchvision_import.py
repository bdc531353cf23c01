"""``verydeep import-torchvision``: torchvision's VGG weights as a fully-convolutional entry.

The weights file is read with ``torch.load(weights_only=True)``: tensors only, never pickled
objects. Preprocessing and the 1000 ImageNet category names come from torchvision's weight
metadata, which ships with the package (nothing is downloaded for them).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torchvision.models import (
    VGG11_Weights,
    VGG13_Weights,
    VGG16_Weights,
    VGG19_Weights,
)

from model_store import ModelStore, Preprocessing, StoreEntry, TrainScale, sha256_file
from training.errors import UserFacingError
from training.export import export_to_store
from training.torchvision_names import TORCHVISION_ARCHS
from training.vgg import VGG, build_vgg

log = logging.getLogger(__name__)

WEIGHTS = {
    "vgg11": VGG11_Weights.IMAGENET1K_V1,
    "vgg13": VGG13_Weights.IMAGENET1K_V1,
    "vgg16": VGG16_Weights.IMAGENET1K_V1,
    "vgg19": VGG19_Weights.IMAGENET1K_V1,
}
IMAGENET_PREPROCESSING = Preprocessing(
    color_order="RGB", scale=1 / 255, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)
)
# torchvision's recipe trains on random-resized crops and evaluates at resize 256: we record
# S = 256, so the default test scales are the paper's {224, 256, 288}.
TORCHVISION_TRAIN_SCALE = TrainScale(min=256, max=256)


class WeightsError(UserFacingError):
    pass


def load_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"no weights file at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors come in many types
        raise WeightsError(
            f"cannot load {path} as a state dict with weights_only=True: {err}"
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path} does not hold a state dict of tensors")
    return state


def check_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Raise an error naming the first missing, unexpected or wrongly shaped key."""
    expected = model.state_dict()
    for key, tensor in expected.items():
        if key not in state:
            raise WeightsError(
                f"{source}: missing key {key!r} (expected shape {tuple(tensor.shape)})"
            )
        if state[key].shape != tensor.shape:
            raise WeightsError(
                f"{source}: key {key!r} has shape {tuple(state[key].shape)}, "
                f"expected {tuple(tensor.shape)}"
            )
    for key in state:
        if key not in expected:
            raise WeightsError(f"{source}: unexpected key {key!r}")


def download_weights(arch: str) -> Path:
    """Fetch the official file into torch's hub cache (hash checked) and return its path."""
    url = WEIGHTS[arch].url
    try:
        torch.hub.load_state_dict_from_url(url, progress=True, check_hash=True, weights_only=True)
    except Exception as err:  # URLError, HTTPError, hash mismatch, ...
        raise WeightsError(
            f"cannot download the official {arch} weights from {url}: {err}. "
            "Fetch that file on a machine with network access and pass it with --weights FILE."
        ) from None
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name


def build_torchvision_model(arch: str, state: dict[str, torch.Tensor], source: str) -> VGG:
    config = TORCHVISION_ARCHS[arch]
    model = build_vgg(config, 1000, init=None)
    check_state_dict(model, state, source)
    model.load_state_dict(state)
    return model.eval()


def import_torchvision(
    arch: str,
    store: str | Path,
    name: str,
    *,
    weights: str | Path | None = None,
    test_scales: list[int] | None = None,
    overwrite: bool = False,
    dtype: str = "float32",
) -> StoreEntry:
    if arch not in WEIGHTS:
        raise WeightsError(f"unknown torchvision arch {arch!r}; choose one of {', '.join(WEIGHTS)}")
    path = Path(weights) if weights is not None else download_weights(arch)
    model = build_torchvision_model(arch, load_weights_file(path), str(path))
    meta: dict[str, Any] = WEIGHTS[arch].meta
    return export_to_store(
        model,
        ModelStore(store),
        name,
        labels=list(meta["categories"]),
        preprocessing=IMAGENET_PREPROCESSING,
        train_scale=TORCHVISION_TRAIN_SCALE,
        test_scales=test_scales,
        source="torchvision",
        checkpoint_sha256=sha256_file(path),
        metrics={"torchvision_arch": arch, **meta["_metrics"]},
        overwrite=overwrite,
        dtype=dtype,
        progress=True,
    )
