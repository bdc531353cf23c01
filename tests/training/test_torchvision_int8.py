"""``verydeep import-torchvision vgg11 --weights FILE --int8 --calibration DIR`` end to end: the
command writes an int8 entry beside the float32 import of the same file, and the service's engine
and protocol classify with it as with float32 (docs/training.md, "int8 export").

The fast test imports a narrow config A (vgg11's layout, torchvision's key names, 1000 classes;
``build_vgg`` narrowed for the test) from a file of kilobytes; the slow one imports full-size
vgg11 with torchvision's random initialisation (a 0.5 GB file, minutes on 2 cores)."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

import training.torchvision_import as tv_import
from bench import images
from model_store import ModelStore
from model_store.imaging import decode
from service.core.engine import EngineOptions, open_engine
from service.core.protocol import classify
from tests.conftest import TINY_FC, TINY_WIDTH
from training import quantize
from training.shapes import write_shapes
from training.vgg import build_vgg
from verydeep.cli import main

PHOTO_SIZES = ((640, 480), (480, 640), (500, 500), (800, 450))


def import_both(weights: Path, calibration: Path, store: Path) -> None:
    """The float32 and the int8 import of ``weights``, by the command line."""
    common = ["import-torchvision", "vgg11", "--weights", str(weights), "--store", str(store)]
    assert main([*common, "--name", "v11"]) == 0
    assert main([*common, "--name", "v11-int8", "--int8", "--calibration", str(calibration)]) == 0


def compare_through_the_engine(store_root: Path, photos: int) -> dict[str, float]:
    """Both entries opened and run as the service runs them (dense, default scales, flip) on
    photo-like images: top-1 agreement (a near tie, as the exporter counts it, agrees) and the
    largest posterior difference."""
    store = ModelStore(store_root)
    options = EngineOptions(device="cpu", intra_op_threads=1)
    reference, quantised = (open_engine(store, n, options) for n in ("v11", "v11-int8"))
    assert reference.provider == quantised.provider == "CPUExecutionProvider"
    assert quantised.manifest.onnx.dtype == "int8" and reference.manifest.onnx.dtype == "float32"
    assert quantised.manifest.test_scales == reference.manifest.test_scales == [224, 256, 288]
    agree, same, worst = 0, 0, 0.0
    for i in range(photos):
        w, h = PHOTO_SIZES[i % len(PHOTO_SIZES)]
        image = decode(images.jpeg(w, h, seed=300 + i)).image
        want = classify([reference], image).posterior
        got = classify([quantised], image).posterior
        assert want.shape == got.shape == (1000,)
        same += int(np.argmax(want) == np.argmax(got))
        agree += int(want[np.argmax(got)] >= want.max() - quantize.TIE)
        worst = max(worst, float(np.max(np.abs(want - got))))
    return {"agreement": agree / photos, "same_top1": same / photos, "max_diff": worst}


def check_manifest(store_root: Path) -> None:
    entry = ModelStore(store_root).read("v11-int8")
    float_entry = ModelStore(store_root).read("v11")
    metrics = entry.manifest.provenance.metrics
    assert entry.manifest.provenance.source == "torchvision"
    assert metrics["torchvision_arch"] == "vgg11"
    assert metrics["int8_calibration_images"] == 8
    assert 0 <= metrics["int8_max_posterior_diff"] <= quantize.MAX_POSTERIOR_DIFF
    assert metrics["int8_top1_agreement"] >= quantize.MIN_TOP1_AGREEMENT
    assert isinstance(metrics["int8_reduce_range"], bool)
    assert (
        entry.manifest.labels == float_entry.manifest.labels and len(entry.manifest.labels) == 1000
    )
    assert entry.onnx_path.stat().st_size < float_entry.onnx_path.stat().st_size / 2


@pytest.fixture(scope="module")
def calibration(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 shapes images, the exporter's minimum."""
    return write_shapes(tmp_path_factory.mktemp("cal"), 1, seed=5, workers=1, progress=False)


def test_import_torchvision_int8_of_a_narrow_vgg11(
    tmp_path: Path, calibration: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    narrow = functools.partial(build_vgg, width=TINY_WIDTH, fc_width=TINY_FC)
    monkeypatch.setattr(tv_import, "build_vgg", narrow)
    torch.manual_seed(11)
    model = narrow("A", 1000, init="glorot")
    with torch.no_grad():
        model.classifier[6].weight.mul_(30.0)  # posteriors far from uniform
    keys = torchvision.models.vgg11(weights=None).state_dict().keys()
    assert list(model.state_dict()) == list(keys)  # torchvision's names, narrower tensors
    weights = tmp_path / "vgg11-narrow.pth"
    torch.save(model.state_dict(), weights)
    import_both(weights, calibration, tmp_path / "store")
    check_manifest(tmp_path / "store")
    found = compare_through_the_engine(tmp_path / "store", photos=6)
    assert found["agreement"] == 1.0
    assert found["max_diff"] <= quantize.MAX_POSTERIOR_DIFF


@pytest.mark.slow
def test_import_torchvision_int8_of_full_size_vgg11(tmp_path: Path, calibration: Path) -> None:
    torch.manual_seed(0)
    weights = tmp_path / "vgg11.pth"
    torch.save(torchvision.models.vgg11(weights=None).state_dict(), weights)  # 0.5 GB
    import_both(weights, calibration, tmp_path / "store")
    weights.unlink()
    check_manifest(tmp_path / "store")
    found = compare_through_the_engine(tmp_path / "store", photos=4)
    assert found["agreement"] == 1.0
    assert found["max_diff"] <= quantize.MAX_POSTERIOR_DIFF
