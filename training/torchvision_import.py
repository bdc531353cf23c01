"""``verydeep import-torchvision``: torchvision's VGG weights as a fully-convolutional entry.

The weights file is read with ``torch.load(weights_only=True)``: tensors only, never pickled
objects. Preprocessing and the 1000 ImageNet category names come from torchvision's weight
metadata, which ships with the package (nothing is downloaded for them).
"""

from __future__ import annotations

import logging
import re
import sys
import zipfile
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
from model_store.progress import is_terminal
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
# The first bytes of a file of torch.save(..., _use_new_zipfile_serialization=False).
LEGACY_MAGIC = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19."


class WeightsError(UserFacingError):
    pass


def load_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in ``path``, read with ``weights_only=True``; a file that is not one
    gets an error saying what it is instead."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"no weights file at {path}")
    state = _torch_load(path)
    if isinstance(state, dict) and state.get("format") == "verydeep-checkpoint":
        raise WeightsError(
            f"{path} is a checkpoint of `verydeep train`, not torchvision weights: "
            "`verydeep export` makes a store entry of it"
        )
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state:
        raise WeightsError(f"{path} holds {_describe(state)}, not a state dict of tensors")
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise WeightsError(
                f"{path} does not hold a state dict of tensors: {key!r} is {_describe(value)}"
            )
    return state


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors come in many types (KeyError for a text file)
        if not _is_torch_file(path):
            raise WeightsError(
                f"{path} is not a PyTorch checkpoint (torch.save's zip or legacy format); "
                "torchvision's VGG weights are files such as vgg16-397923af.pth"
            ) from None
        reason = re.search(r"WeightsUnpickler error: ([^.]*)", str(err))
        raise WeightsError(
            f"cannot load {path} with weights_only=True (tensors only, no pickled objects): "
            f"{reason.group(1) if reason else f'{type(err).__name__}: {err}'}"
        ) from None


def _is_torch_file(path: Path) -> bool:
    """The container of torch.save: a zip archive, or the legacy format's magic number."""
    with open(path, "rb") as f:
        head = f.read(len(LEGACY_MAGIC))
    return zipfile.is_zipfile(path) or head == LEGACY_MAGIC


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        return "an empty dict" if not value else f"a dict with keys {_keys(value)}"
    name = type(value).__name__
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def _keys(state: dict[Any, Any], limit: int = 4) -> str:
    shown = ", ".join(repr(k) for k in list(state)[:limit])
    return shown + (f", ... ({len(state)} in all)" if len(state) > limit else "")


def check_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Raise an error naming the first missing, unexpected or wrongly shaped key (or saying
    that ``state`` is no VGG state dict at all, when it has none of the keys)."""
    expected = model.state_dict()
    if not set(expected) & set(state):
        raise WeightsError(
            f"{source} is not a torchvision VGG state dict: it has none of the keys "
            f"{_keys(expected, 2)} and holds {_keys(state)}"
        )
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
    log.info("downloading %s into torch's hub cache (%s)", url, torch.hub.get_dir())
    try:
        torch.hub.load_state_dict_from_url(
            url, progress=is_terminal(sys.stderr), check_hash=True, weights_only=True
        )
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
    calibration: str | Path | None = None,
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
        calibration=calibration,
    )
