"""Fully-convolutional ONNX export that verifies itself before anything is written
(docs/training.md, "Fully convolutional, exported to ONNX").

The exported graph has input ``image (N, 3, H, W)`` and output ``scores (N, K, h, w)`` with N, H
and W dynamic. Before the file reaches the store it passes the ONNX checker and onnxruntime must
agree with the torch net at 224x224, a non-square size and a large size.
"""

from __future__ import annotations

import copy
import logging
import tempfile
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from model_store import (
    SCHEMA_VERSION,
    Manifest,
    ModelStore,
    OnnxInfo,
    Preprocessing,
    Provenance,
    StoreEntry,
    TrainScale,
    sha256_file,
)
from training.errors import UserFacingError
from training.fully_conv import FullyConvVGG, score_map_shape, to_fully_convolutional
from training.vgg import VGG, count_parameters, weight_layers

log = logging.getLogger(__name__)

DEFAULT_OPSET = 17
INPUT_NAME = "image"
OUTPUT_NAME = "scores"
# (batch, height, width): the crop size, a non-square size with two images, a large image.
VERIFY_SIZES: tuple[tuple[int, int, int], ...] = ((1, 224, 224), (2, 256, 320), (1, 480, 640))
# Verification tolerance: ATOL + RTOL * max |reference score|, the reference being the float32
# torch net, so a float16 export is held to what half precision can keep.
RTOL = {"float32": 1e-3, "float16": 2e-2}
ATOL = {"float32": 1e-4, "float16": 1e-3}
DTYPES = {"float32": torch.float32, "float16": torch.float16}


class ExportError(UserFacingError):
    """The exported graph failed a check; nothing was written to the store."""


@dataclass(frozen=True)
class SizeCheck:
    batch: int
    height: int
    width: int
    max_abs_diff: float
    tolerance: float


def export_onnx(
    fcn: FullyConvVGG,
    path: str | Path,
    *,
    opset: int = DEFAULT_OPSET,
    dtype: str = "float32",
    verify_sizes: tuple[tuple[int, int, int], ...] = VERIFY_SIZES,
) -> list[SizeCheck]:
    """Export ``fcn`` to ``path`` with weights, input and output in ``dtype`` ("float32" or
    "float16") and verify it against the float32 net; raises ExportError when a check fails."""
    if dtype not in DTYPES:
        raise ExportError(f"unknown export dtype {dtype!r}; use float32 or float16")
    fcn = fcn.eval()
    path = Path(path)
    log.info("exporting to ONNX (opset %d, %s)", opset, dtype)
    # float32 exports the net itself: a copy would hold another set of weights (0.5 GB at full
    # size) through the verification (docs/training.md, "Import torchvision's ImageNet weights").
    graph = fcn if dtype == "float32" else copy.deepcopy(fcn).to(DTYPES[dtype])
    example = torch.zeros(1, 3, 224, 224, dtype=DTYPES[dtype])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            graph,
            (example,),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={
                INPUT_NAME: {0: "N", 2: "H", 3: "W"},
                OUTPUT_NAME: {0: "N", 2: "h", 3: "w"},
            },
        )
    del graph
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as err:
        raise ExportError(f"ONNX checker rejected the exported graph: {err}") from None
    return verify_onnx(fcn, path, verify_sizes, dtype=dtype)


def verify_onnx(
    fcn: FullyConvVGG,
    path: str | Path,
    sizes: tuple[tuple[int, int, int], ...] = VERIFY_SIZES,
    *,
    dtype: str = "float32",
) -> list[SizeCheck]:
    """Compare onnxruntime (CPU) with the float32 torch net on random inputs at each size; a
    log line per size is the progress (no bar to interleave with the log)."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(0)
    checks = []
    for i, (batch, height, width) in enumerate(sizes, 1):
        x = torch.randn(batch, 3, height, width, generator=generator)
        with torch.no_grad():
            expected = fcn(x).numpy()
        (actual,) = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy().astype(dtype)})
        actual = actual.astype(np.float32)
        want_shape = (batch, fcn.num_classes, *score_map_shape(height, width))
        if actual.shape != want_shape:
            raise ExportError(
                f"ONNX output at {batch}x3x{height}x{width} has shape {actual.shape}, "
                f"expected {want_shape}"
            )
        diff = float(np.max(np.abs(actual - expected)))
        tolerance = ATOL[dtype] + RTOL[dtype] * float(np.max(np.abs(expected)))
        if not diff <= tolerance:
            raise ExportError(
                f"ONNX output differs from torch at {batch}x3x{height}x{width}: "
                f"max |diff| {diff:.3g} > tolerance {tolerance:.3g}"
            )
        checks.append(SizeCheck(batch, height, width, diff, tolerance))
        log.info(
            "verified %dx3x%dx%d (%d of %d): max |diff| %.3g", batch, height, width, i, len(sizes),
            diff,
        )  # fmt: skip
    return checks


def export_to_store(
    model: VGG,
    store: ModelStore,
    name: str,
    *,
    labels: list[str],
    preprocessing: Preprocessing,
    train_scale: TrainScale,
    source: str,
    test_scales: list[int] | None = None,
    checkpoint_sha256: str | None = None,
    metrics: dict[str, Any] | None = None,
    overwrite: bool = False,
    opset: int = DEFAULT_OPSET,
    dtype: str = "float32",
    verify_sizes: tuple[tuple[int, int, int], ...] = VERIFY_SIZES,
) -> StoreEntry:
    """Convert ``model`` to fully-convolutional form, export, verify and write a store entry."""
    if len(labels) != model.num_classes:
        raise ExportError(f"{len(labels)} labels for a model with {model.num_classes} classes")
    store.entry_path(name)  # refuses a bad name before any work
    if (store.root / name).exists() and not overwrite:
        raise ExportError(f"entry {name!r} already exists in {store.root} (use --force)")
    fcn = to_fully_convolutional(model.eval())
    with tempfile.TemporaryDirectory(prefix="verydeep-export-") as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        export_onnx(fcn, onnx_path, opset=opset, dtype=dtype, verify_sizes=verify_sizes)
        manifest = Manifest(
            schema_version=SCHEMA_VERSION,
            name=name,
            config=model.config,
            weight_layers=weight_layers(model),
            parameters=count_parameters(model),
            num_classes=model.num_classes,
            labels=list(labels),
            preprocessing=preprocessing,
            train_scale=train_scale,
            test_scales=test_scales or train_scale.default_test_scales(),
            onnx=OnnxInfo(
                file="model.onnx",
                sha256=sha256_file(onnx_path),
                opset=opset,
                input=INPUT_NAME,
                output=OUTPUT_NAME,
                dtype=dtype,
            ),
            provenance=Provenance(
                source=source,
                checkpoint_sha256=checkpoint_sha256,
                created=datetime.now(UTC).replace(microsecond=0),
                metrics=metrics or {},
            ),
        )
        return store.write(manifest, onnx_path, overwrite=overwrite)
