"""A store entry back into a trainable ``VGG``: the weights of an exported classification net,
read from its ONNX initializers (docs/training.md, "Localisation", "From a store entry").

An entry written by ``training.export`` holds the fully-convolutional net's weights under their
torch names: ``features.<i>.weight`` / ``.bias`` (the convs, as in ``VGG.features``) and
``head.0`` / ``head.3`` / ``head.6`` (fc6, fc7 and fc8 as 7x7 and 1x1 convs). The FC form's
``Linear`` weights are those conv kernels reshaped (``training.fully_conv._linear_as_conv`` is the
other way round), so the VGG rebuilt here is the trained net exactly. The width and the fc width
are read from the kernels' shapes; the config from the manifest.

Before the net is returned it is checked against the ONNX graph itself: onnxruntime and the
rebuilt net's fully-convolutional form must give the same class score maps at 224 x 224 and at a
non-square size (``training.export.verify_onnx``, the export's own check). float32 and float16
entries are read (float16 weights become float32); an int8 entry's weights are quantised and are
refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from model_store import Manifest, ModelStore, Preprocessing, StoreError, TrainScale
from training.errors import UserFacingError
from training.vgg import VGG, build_vgg

# The checks of a rebuilt net: the crop size and a non-square size.
VERIFY_SIZES: tuple[tuple[int, int, int], ...] = ((1, 224, 224), (1, 256, 320))
# fc6, fc7, fc8 of VGG.classifier -> their conv form in the exported head.
CLASSIFIER_FROM_HEAD = {f"classifier.{i}": f"head.{i}" for i in (0, 3, 6)}


class FromOnnxError(UserFacingError):
    """A store entry that cannot be turned back into a trainable net."""


@dataclass
class StoreNet:
    """A classification net rebuilt from a store entry, with what a checkpoint would hold."""

    model: VGG
    config: str
    width: float
    fc_width: int
    labels: list[str]
    preprocessing: Preprocessing
    train_scale: TrainScale
    entry: str  # the entry's folder
    sha256: str  # of its ONNX file


def is_store_entry(path: str | Path) -> bool:
    """A folder with a manifest (``STORE/NAME``), as ``--init-from`` may name instead of a
    checkpoint file."""
    return Path(path).is_dir() and (Path(path) / "manifest.json").is_file()


def load_store_entry(path: str | Path, *, verify: bool = True) -> StoreNet:
    """The classification net of the store entry folder ``path`` (``STORE/NAME``), its manifest's
    sha256 checked, rebuilt and (with ``verify``) checked against onnxruntime."""
    path = Path(path)
    try:
        entry = ModelStore(path.parent).read(path.name)
    except StoreError as err:
        raise FromOnnxError(f"{path}: {err}") from None
    manifest = entry.manifest
    if manifest.task != "classification":
        raise FromOnnxError(f"{path} is a {manifest.task} entry; a classification net is needed")
    if manifest.onnx.dtype not in ("float32", "float16"):
        raise FromOnnxError(
            f"{path} is a {manifest.onnx.dtype} entry: its weights are quantised; use the "
            "float32 export"
        )
    model, width, fc_width = vgg_from_onnx(entry.onnx_path, manifest)
    if verify:
        verify_against_onnx(model, entry.onnx_path, manifest)
    return StoreNet(
        model=model,
        config=manifest.config,
        width=width,
        fc_width=fc_width,
        labels=list(manifest.labels),
        preprocessing=manifest.preprocessing,
        train_scale=manifest.train_scale,
        entry=str(path),
        sha256=manifest.onnx.sha256,
    )


def vgg_from_onnx(onnx_path: str | Path, manifest: Manifest) -> tuple[VGG, float, int]:
    """``(model, width, fc_width)``: the FC-form VGG of an exported graph's initializers."""
    graph = onnx.load(str(onnx_path))
    weights = {
        init.name: np.asarray(numpy_helper.to_array(init), dtype=np.float32)
        for init in graph.graph.initializer
    }
    head0 = weights.get("head.0.weight")
    first = weights.get("features.0.weight")
    if head0 is None or first is None or head0.ndim != 4:
        raise FromOnnxError(
            f"{onnx_path} has no features.0 / head.0 initializers: not an export of "
            "training.export (an ONNX file of another exporter cannot be read back)"
        )
    width = first.shape[0] / 64
    fc_width = int(head0.shape[0])
    model = build_vgg(
        manifest.config, manifest.num_classes, width=width, fc_width=fc_width, init=None
    )
    state: dict[str, torch.Tensor] = {}
    own = model.state_dict()
    for key, target in own.items():
        prefix, suffix = key.rsplit(".", 1)
        source = CLASSIFIER_FROM_HEAD.get(prefix, prefix)
        name = f"{source}.{suffix}"
        if name not in weights:
            raise FromOnnxError(f"{onnx_path} has no initializer {name} (for {key})")
        value = torch.from_numpy(weights[name].copy())
        reshaped = prefix in CLASSIFIER_FROM_HEAD  # fc kernels -> Linear weights
        if value.numel() != target.numel() or (not reshaped and value.shape != target.shape):
            raise FromOnnxError(
                f"{onnx_path}: {name} has shape {tuple(value.shape)}, config "
                f"{manifest.config} at width {width:g}, fc {fc_width} needs {tuple(target.shape)}"
            )
        state[key] = value.reshape(target.shape)
    model.load_state_dict(state)
    return model.eval(), width, fc_width


def verify_against_onnx(model: VGG, onnx_path: str | Path, manifest: Manifest) -> None:
    """onnxruntime's score maps equal the rebuilt net's, as an export is verified; raises
    FromOnnxError otherwise."""
    from training.export import ExportError, verify_onnx
    from training.fully_conv import to_fully_convolutional

    fcn = to_fully_convolutional(model.eval())
    try:
        verify_onnx(
            fcn, onnx_path, VERIFY_SIZES, dtype=manifest.onnx.dtype, output=manifest.onnx.output
        )
    except ExportError as err:
        raise FromOnnxError(f"the net rebuilt from {onnx_path} differs from it: {err}") from None
