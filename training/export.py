"""Fully-convolutional ONNX export that verifies itself before anything is written
(docs/training.md, "Fully convolutional, exported to ONNX").

The exported graph has input ``image (N, 3, H, W)`` and outputs ``scores (N, K, h, w)`` and
``features (N, F, h, w)`` (fc7 after its ReLU, docs/training.md, "The features output") with N, H
and W dynamic. Before the file reaches the store it passes the ONNX checker and onnxruntime must
agree with the torch net on both outputs at 224x224, a non-square size and a large size.
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
from torch import nn

from model_store import (
    SCHEMA_VERSION,
    Localization,
    Manifest,
    ModelStore,
    OnnxInfo,
    Preprocessing,
    Provenance,
    StoreEntry,
    TrainScale,
    sha256_file,
)
from training import quantize
from training.errors import UserFacingError
from training.fully_conv import FullyConvVGG, score_map_shape, to_fully_convolutional
from training.vgg import VGG, count_parameters, weight_layers

log = logging.getLogger(__name__)

DEFAULT_OPSET = 17
INPUT_NAME = "image"
OUTPUT_NAME = "scores"
# A localisation net's last layer regresses boxes: its map is ``boxes`` (docs/localization.md).
BOXES_NAME = "boxes"
FEATURES_NAME = "features"
# (batch, height, width): the crop size, a non-square size with two images, a large image.
VERIFY_SIZES: tuple[tuple[int, int, int], ...] = ((1, 224, 224), (2, 256, 320), (1, 480, 640))
# Verification tolerance: ATOL + RTOL * max |reference score|, the reference being the float32
# torch net, so a float16 export is held to what half precision can keep.
RTOL = {"float32": 1e-3, "float16": 2e-2}
# int8 is quantised from the verified float32 graph and checked against it (training/quantize.py).
ATOL = {"float32": 1e-4, "float16": 1e-3}
DTYPES = {"float32": torch.float32, "float16": torch.float16}


class ExportError(UserFacingError):
    """The exported graph failed a check; nothing was written to the store."""


@dataclass(frozen=True)
class SizeCheck:
    """One verified size: the scores' and the features' max |diff| against torch, each with its
    own tolerance."""

    batch: int
    height: int
    width: int
    max_abs_diff: float
    tolerance: float
    features_max_abs_diff: float
    features_tolerance: float


class _ScoresAndFeatures(nn.Module):
    """What is traced: ``fcn``'s forward with fc7's ReLU output as a second output. It holds the
    net's ``features`` and ``head`` under their own names, so the graph's ops and names are those
    of the scores-only export; the fc7 ReLU's output tensor (fc8's input) is merely named
    ``features``. onnxruntime runs every node of a graph whichever outputs are asked for, so with
    the same nodes, asking for ``scores`` alone costs what it did before (docs/training.md, "The
    features output", with the measurement)."""

    def __init__(self, fcn: FullyConvVGG) -> None:
        super().__init__()
        self.features = fcn.features
        self.head = fcn.head
        self._fcn = [fcn]  # in a list: not a submodule, so no scope of its own in the trace
        # torch.onnx.export puts the wrapper back in its own mode afterwards, and a new module is
        # in training mode: the net's layers would come out of the export with dropout on.
        self.train(fcn.training)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._fcn[0].scores_and_features(image)


def export_onnx(
    fcn: FullyConvVGG,
    path: str | Path,
    *,
    opset: int = DEFAULT_OPSET,
    dtype: str = "float32",
    verify_sizes: tuple[tuple[int, int, int], ...] = VERIFY_SIZES,
    output: str = OUTPUT_NAME,
) -> list[SizeCheck]:
    """Export ``fcn`` to ``path`` with weights, input and outputs in ``dtype`` ("float32" or
    "float16") and verify it against the float32 net; raises ExportError when a check fails.
    ``output`` names the last layer's map: ``scores``, or ``boxes`` for a localisation net."""
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
            _ScoresAndFeatures(graph),
            (example,),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[output, FEATURES_NAME],
            dynamic_axes={
                INPUT_NAME: {0: "N", 2: "H", 3: "W"},
                output: {0: "N", 2: "h", 3: "w"},
                FEATURES_NAME: {0: "N", 2: "h", 3: "w"},
            },
        )
    del graph
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as err:
        raise ExportError(f"ONNX checker rejected the exported graph: {err}") from None
    return verify_onnx(fcn, path, verify_sizes, dtype=dtype, output=output)


def verify_onnx(
    fcn: FullyConvVGG,
    path: str | Path,
    sizes: tuple[tuple[int, int, int], ...] = VERIFY_SIZES,
    *,
    dtype: str = "float32",
    output: str = OUTPUT_NAME,
) -> list[SizeCheck]:
    """Compare onnxruntime (CPU) with the float32 torch net on random inputs at each size, on
    ``scores`` and on ``features``, each output against its own tolerance; a log line per size is
    the progress (no bar to interleave with the log)."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(0)
    checks = []
    for i, (batch, height, width) in enumerate(sizes, 1):
        x = torch.randn(batch, 3, height, width, generator=generator)
        with torch.no_grad():
            scores, features = (t.numpy() for t in fcn.scores_and_features(x))
        actual = session.run([output, FEATURES_NAME], {INPUT_NAME: x.numpy().astype(dtype)})
        size = f"{batch}x3x{height}x{width}"
        h, w = score_map_shape(height, width)
        diffs = [
            _compare(name, got, want, (batch, channels, h, w), size, dtype)
            for name, got, want, channels in (
                (output, actual[0], scores, fcn.num_classes),
                (FEATURES_NAME, actual[1], features, fcn.feature_dim),
            )
        ]
        checks.append(SizeCheck(batch, height, width, *diffs[0], *diffs[1]))
        log.info(
            "verified %s (%d of %d): max |diff| %.3g in %s, %.3g in features", size, i,
            len(sizes), diffs[0][0], output, diffs[1][0],
        )  # fmt: skip
    return checks


def _compare(
    name: str,
    actual: np.ndarray,
    expected: np.ndarray,
    want_shape: tuple[int, ...],
    size: str,
    dtype: str,
) -> tuple[float, float]:
    """``(max |diff|, tolerance)`` of one output; raises ExportError on a wrong shape or a
    difference above ``ATOL + RTOL * max |expected|``."""
    if actual.shape != want_shape:
        raise ExportError(
            f"ONNX output {name!r} at {size} has shape {actual.shape}, expected {want_shape}"
        )
    diff = float(np.max(np.abs(actual.astype(np.float32) - expected)))
    tolerance = ATOL[dtype] + RTOL[dtype] * float(np.max(np.abs(expected)))
    if not diff <= tolerance:
        raise ExportError(
            f"ONNX output {name!r} differs from torch at {size}: "
            f"max |diff| {diff:.3g} > tolerance {tolerance:.3g}"
        )
    return diff, tolerance


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
    calibration: str | Path | None = None,
    localization: Localization | None = None,
) -> StoreEntry:
    """Convert ``model`` to fully-convolutional form, export, verify and write a store entry.

    ``dtype="int8"`` quantises the verified float32 graph, calibrated on the images of
    ``calibration``, and checks it against
    the float32 graph before writing (docs/training.md, "int8 export"). With ``localization``
    the model's last layer is a box regressor and the entry's task is ``localization``, its
    map output ``boxes`` (docs/localization.md, "Export")."""
    _check_request(model, labels, localization, dtype)
    store.entry_path(name)  # refuses a bad name before any work
    if (store.root / name).exists() and not overwrite:
        raise ExportError(f"entry {name!r} already exists in {store.root} (use --force)")
    scales = test_scales or train_scale.default_test_scales()
    int8_inputs = None
    if dtype == "int8":
        if calibration is None:
            raise ExportError("int8 export needs a calibration folder (--calibration DIR)")
        # Before the export's work: a folder with too few images is refused at once.
        int8_inputs = quantize.calibration_inputs(calibration, preprocessing, scales)
    fcn = to_fully_convolutional(model.eval())
    with tempfile.TemporaryDirectory(prefix="verydeep-export-") as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        float_dtype = "float32" if dtype == "int8" else dtype
        output = OUTPUT_NAME if localization is None else BOXES_NAME
        export_onnx(
            fcn, onnx_path, opset=opset, dtype=float_dtype, verify_sizes=verify_sizes,
            output=output,
        )  # fmt: skip
        if int8_inputs is not None:
            onnx_path, int8_metrics = _quantize(onnx_path, int8_inputs, scales)
            metrics = {**(metrics or {}), **int8_metrics}
        manifest = Manifest(
            schema_version=SCHEMA_VERSION,
            name=name,
            config=model.config,
            weight_layers=weight_layers(model),
            parameters=count_parameters(model),
            num_classes=len(labels),
            labels=list(labels),
            preprocessing=preprocessing,
            train_scale=train_scale,
            test_scales=scales,
            onnx=OnnxInfo(
                file="model.onnx",
                sha256=sha256_file(onnx_path),
                opset=opset,
                input=INPUT_NAME,
                output=output,
                dtype=dtype,
                features=FEATURES_NAME,
            ),
            task="classification" if localization is None else "localization",
            localization=localization,
            provenance=Provenance(
                source=source,
                checkpoint_sha256=checkpoint_sha256,
                created=datetime.now(UTC).replace(microsecond=0),
                metrics=metrics or {},
            ),
        )
        return store.write(manifest, onnx_path, overwrite=overwrite)


def _check_request(
    model: VGG, labels: list[str], localization: Localization | None, dtype: str
) -> None:
    """Refuse, before any work, labels that do not fit the model's last layer, and int8 for a
    localisation net."""
    # A classifier has an output per label; a box regressor 4 per label (PCR) or 4 (SCR).
    outputs = len(labels) if localization is None else localization.box_channels(len(labels))
    if outputs != model.num_classes:
        raise ExportError(
            f"{len(labels)} labels for a model with {model.num_classes} "
            + (
                "classes"
                if localization is None
                else f"outputs ({localization.regression} regression needs {outputs})"
            )
        )
    if localization is not None and dtype == "int8":
        raise ExportError(
            "int8 export is for classification nets; export a localization net "
            "in float32 or float16"
        )


def _quantize(
    float_path: Path, int8_inputs: tuple[int, list[np.ndarray]], scales: list[int]
) -> tuple[Path, dict[str, Any]]:
    """The int8 graph of the verified float32 one at ``float_path`` (written beside it), and
    what its check against float32 measured, for the manifest's metrics."""
    int8_path = float_path.parent / "int8" / "model.onnx"
    int8_path.parent.mkdir()
    check = quantize.quantize_verified(
        float_path,
        int8_path,
        *int8_inputs,
        scales=scales,
        input_name=INPUT_NAME,
        output_name=OUTPUT_NAME,
        features_name=FEATURES_NAME,
    )
    return int8_path, {
        "int8_calibration_images": check.images,
        "int8_max_posterior_diff": round(check.max_posterior_diff, 6),
        "int8_top1_agreement": check.top1_agreement,
        "int8_reduce_range": check.reduce_range,
    }
