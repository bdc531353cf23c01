"""int8 export: static QDQ quantisation of a verified float32 graph (docs/training.md, "int8
export").

The float32 ONNX file that ``export_onnx`` has just verified against torch is quantised by
onnxruntime's ``quantize_static``: QDQ format, uint8 activations and per-channel int8 weights,
``reduce_range`` (7-bit weights) on a CPU without VNNI, whose 8-bit multiply-adds can overflow.
Calibration runs on up to ``MAX_CALIBRATION_IMAGES`` images of a folder, decoded and preprocessed
by the service's own code (``model_store.imaging``) and fed whole at each of the model's test
scales, as dense evaluation sees them. The int8 graph is then compared with the float32 graph on
those same inputs, by the posteriors dense evaluation computes (spatial mean of the score map,
then softmax); nothing is written when it disagrees by more than the tolerance below.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

from model_store import Preprocessing
from model_store.cpu import cpu_has_vnni
from model_store.imaging import decode, rescale, to_input
from training.errors import UserFacingError

log = logging.getLogger(__name__)

# torchvision.datasets.folder.IMG_EXTENSIONS, as ``verydeep evaluate`` reads a folder.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# Activations in uint8 (weights stay int8): the u8 x s8 products that VNNI multiplies. With int8
# activations onnxruntime's CPU provider converts them to uint8 itself, but only where a
# QuantizeLinear has one consumer; fc7's has two (fc8 and the ``features`` output), so fc7 and
# fc8 stayed float32 Convs on dequantised weights. Measured on VGG-16 (2-core EPYC, VNNI,
# 2026-12-01): all 16 convolutions become QLinearConv, one 256x341 view 35.6 ms against 40.4 ms
# and a flip pair at Q=384 175 ms against 188 ms, as close to float32 as before (largest
# class-score difference 0.107 of 4.4 in both).
ACTIVATIONS = "QUInt8"
MIN_CALIBRATION_IMAGES = 8
MAX_CALIBRATION_IMAGES = 32
# Measured on demo-d and demo-e (docs/training.md, "int8 export"): MinMax kept posteriors closer
# to float32 than Entropy or Percentile did on these nets.
CALIBRATION_METHOD = "MinMax"
# Verification tolerance on the calibration inputs: the largest |posterior difference| between
# the int8 and the float32 graph, and the share of inputs whose top-1 class agrees. demo-d came
# within 0.15 and 0.99 on 32 shapes images at its three scales (a borderline image's posteriors
# move most; on 240 held-out inputs its largest difference was 0.02).
MAX_POSTERIOR_DIFF = 0.25
MIN_TOP1_AGREEMENT = 0.95
# A top-1 class that differs counts as agreeing when float32 gives it a posterior within TIE of
# its own top-1: a near-tie (a random-weight net's near-uniform posteriors) flips at any precision.
TIE = 0.02


class QuantizationError(UserFacingError):
    """The int8 graph could not be calibrated or failed its check; nothing was written."""


@dataclass(frozen=True)
class Int8Check:
    """How the int8 graph compared with the float32 graph on the calibration inputs."""

    images: int
    inputs: int
    max_posterior_diff: float
    top1_agreement: float
    reduce_range: bool
    method: str


def calibration_images(folder: str | Path, max_scale: int) -> list[tuple[str, Image.Image]]:
    """Up to ``MAX_CALIBRATION_IMAGES`` decodable images of ``folder`` (recursively, sorted by
    path), decoded by the service's code; refuses a folder with fewer than
    ``MIN_CALIBRATION_IMAGES``."""
    root = Path(folder)
    if not root.is_dir():
        raise QuantizationError(f"calibration folder {root} does not exist")
    paths = sorted(
        p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )
    images: list[tuple[str, Image.Image]] = []
    skipped = 0
    for path in paths:
        if len(images) == MAX_CALIBRATION_IMAGES:
            break
        try:
            images.append((str(path), decode(path.read_bytes(), max_scale=max_scale).image))
        except Exception as err:  # an undecodable file is skipped, and counted
            skipped += 1
            log.info("calibration: skipping %s (%s)", path, err)
    if len(images) < MIN_CALIBRATION_IMAGES:
        raise QuantizationError(
            f"calibration folder {root} has {len(images)} decodable images "
            f"({skipped} undecodable); int8 export needs at least {MIN_CALIBRATION_IMAGES} "
            f"(it uses up to {MAX_CALIBRATION_IMAGES})"
        )
    return images


def calibration_inputs(
    folder: str | Path, preprocessing: Preprocessing, scales: list[int]
) -> tuple[int, list[np.ndarray]]:
    """``(images, inputs)``: each image rescaled whole to each test scale and normalised by
    ``model_store.imaging.to_input``, as ``(1, 3, H, W)`` float32 arrays."""
    images = calibration_images(folder, max(scales))
    inputs = [
        to_input(rescale(image, q), preprocessing)[None] for _, image in images for q in scales
    ]
    return len(images), inputs


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over a list of inputs."""

    def __init__(self, name: str, inputs: list[np.ndarray]) -> None:
        self._feeds = iter([{name: x} for x in inputs])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def quantize(
    float_path: str | Path,
    int8_path: str | Path,
    inputs: list[np.ndarray],
    *,
    input_name: str,
    method: str = CALIBRATION_METHOD,
    reduce_range: bool | None = None,
) -> None:
    """Quantise ``float_path`` into ``int8_path`` (QDQ, per-channel weights), calibrated on
    ``inputs``."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    ACTIVATION_TYPE = getattr(QuantType, ACTIVATIONS)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if reduce_range is None:
        reduce_range = not cpu_has_vnni()
    with tempfile.TemporaryDirectory(prefix="verydeep-int8-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(int8_path),
            _Reader(input_name, inputs),
            quant_format=QuantFormat.QDQ,
            activation_type=ACTIVATION_TYPE,
            weight_type=QuantType.QInt8,
            per_channel=True,
            reduce_range=reduce_range,
            calibrate_method=getattr(CalibrationMethod, method),
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
        )


def posteriors(session: ort.InferenceSession, output: str, x: np.ndarray) -> np.ndarray:
    """Dense evaluation's posteriors of one input: the score map's spatial mean, softmaxed."""
    (scores,) = session.run([output], {session.get_inputs()[0].name: x})
    mean = scores.mean(axis=(2, 3), dtype=np.float64)
    e = np.exp(mean - mean.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def compare(
    float_path: str | Path, int8_path: str | Path, inputs: list[np.ndarray], output: str
) -> tuple[float, float]:
    """``(max |posterior difference|, top-1 agreement)`` of the two graphs on ``inputs``, a
    near-tie (``TIE``) counting as agreement."""
    opts = ort.SessionOptions()
    reference = ort.InferenceSession(str(float_path), opts, providers=["CPUExecutionProvider"])
    quantised = ort.InferenceSession(str(int8_path), opts, providers=["CPUExecutionProvider"])
    worst, agree = 0.0, 0
    for x in inputs:
        want, got = posteriors(reference, output, x), posteriors(quantised, output, x)
        worst = max(worst, float(np.max(np.abs(want - got))))
        agree += int(want[0, got.argmax()] >= want.max() - TIE)
    return worst, agree / len(inputs)


def quantize_verified(
    float_path: str | Path,
    int8_path: str | Path,
    images: int,
    inputs: list[np.ndarray],
    *,
    scales: list[int],
    input_name: str,
    output_name: str,
    features_name: str,
) -> Int8Check:
    """Calibrate on ``inputs`` (from ``calibration_inputs``), quantise and verify; raises
    QuantizationError when the int8 graph's posteriors differ from the float32 graph's by more
    than the tolerance."""
    reduce_range = not cpu_has_vnni()
    log.info(
        "quantising to int8: %d images x %d scales, %s calibration, per-channel weights%s",
        images, len(scales), CALIBRATION_METHOD, ", reduce_range (no VNNI)" if reduce_range else "",
    )  # fmt: skip
    try:
        quantize(float_path, int8_path, inputs, input_name=input_name, reduce_range=reduce_range)
    except Exception as err:
        raise QuantizationError(f"int8 quantisation failed: {err}") from None
    outputs = [o.name for o in ort.InferenceSession(str(int8_path)).get_outputs()]
    if outputs != [output_name, features_name]:
        raise QuantizationError(f"int8 graph has outputs {outputs}, expected scores and features")
    diff, agreement = compare(float_path, int8_path, inputs, output_name)
    log.info(
        "verified int8 on %d inputs: max |posterior diff| %.3g (tolerance %.3g), "
        "top-1 agreement %.3f (at least %.2f)",
        len(inputs), diff, MAX_POSTERIOR_DIFF, agreement, MIN_TOP1_AGREEMENT,
    )  # fmt: skip
    if not (diff <= MAX_POSTERIOR_DIFF and agreement >= MIN_TOP1_AGREEMENT):
        raise QuantizationError(
            f"int8 graph disagrees with float32 on the calibration images: max |posterior "
            f"difference| {diff:.3g} (tolerance {MAX_POSTERIOR_DIFF}), top-1 agreement "
            f"{agreement:.3f} (at least {MIN_TOP1_AGREEMENT})"
        )
    return Int8Check(images, len(inputs), diff, agreement, reduce_range, CALIBRATION_METHOD)
