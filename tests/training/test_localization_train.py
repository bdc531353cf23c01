"""`verydeep train --task localization` end to end on a tiny shapes folder: from a classification
checkpoint or a store entry, PCR and SCR, --tune all and fc, its logs, a bit-exact resume, and
`verydeep export` of the result as a localisation entry whose box map equals torch's."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from model_store import Localization, ModelStore, Preprocessing, TrainScale
from training.checkpoint import load_checkpoint
from training.errors import TrainError
from training.export import ExportError, export_to_store
from training.export_checkpoint import export_checkpoint
from training.from_onnx import load_store_entry
from training.fully_conv import to_fully_convolutional
from training.options import TrainOptions
from training.shapes import CLASSES
from training.train import train
from training.vgg import build_vgg
from verydeep.cli import main as cli


def _opts(out: Path, data: tuple[Path, Path], **changes) -> TrainOptions:
    train_dir, val_dir = data
    opts = TrainOptions(
        out=str(out),
        config="A",
        data=str(train_dir),
        val_data=str(val_dir),
        width=1 / 16,
        fc_width=32,
        scale_min=224,
        scale_max=224,
        epochs=1,
        batch_size=8,
        workers=0,
        init="glorot",
        input_std="data",
        dropout=0.0,
        seed=0,
        device="cpu",
        progress=False,
        tensorboard=False,
    )
    return replace(opts, **changes)


@pytest.fixture(scope="module")
def classifier(tmp_path_factory, shapes_data) -> Path:
    """A classification checkpoint of this project's `verydeep train` (one step)."""
    out = tmp_path_factory.mktemp("classifier")
    return train(_opts(out, shapes_data, max_steps=1)).last


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_pcr_trains_logs_resumes_and_exports(tmp_path: Path, shapes_data, classifier) -> None:
    loc = _opts(tmp_path / "pcr", shapes_data, task="localization", init_from=str(classifier))
    result = train(loc)
    assert result.stopped == "epochs" and result.global_step == 3
    out = tmp_path / "pcr"
    for name in ("last.pt", "best.pt", "metrics.csv", "steps.csv", "curves.png"):
        assert (out / name).is_file(), name
    epoch = _rows(out / "metrics.csv")[0]
    assert {"val_loss", "val_loc_error", "train_loc_error", "train_masked"} <= set(epoch)
    assert 0 <= float(epoch["val_loc_error"]) <= 1 and float(epoch["val_loss"]) > 0
    steps = _rows(out / "steps.csv")
    assert len(steps) == 3 and all(0 <= int(float(r["masked"])) <= 8 for r in steps)

    ckpt = load_checkpoint(result.last)
    assert ckpt.localization == {"regression": "per-class", "tuned": "all"}
    assert ckpt.num_classes == 4 * len(CLASSES) and ckpt.labels == list(CLASSES)
    assert ckpt.state_dict["classifier.6.weight"].shape == (32, 32)
    assert ckpt.training["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-3)
    assert ckpt.training["metrics"]["val_method"].startswith("central 224 crop")
    # The convs and fc6 / fc7 start from the classifier, and trained.
    source = load_checkpoint(classifier).state_dict
    assert not torch.equal(ckpt.state_dict["features.0.weight"], source["features.0.weight"])

    # A run stopped after step 2 and resumed ends where the uninterrupted one did.
    part = tmp_path / "part"
    assert train(replace(loc, out=str(part), max_steps=2)).global_step == 2
    train(replace(loc, out=str(part), resume="auto"))
    resumed = load_checkpoint(part / "last.pt")
    for key, value in ckpt.state_dict.items():
        assert torch.equal(value, resumed.state_dict[key]), key
    assert [r["loss"] for r in _rows(part / "steps.csv")] == [r["loss"] for r in steps]

    # Export: a localisation entry whose box map is torch's at several sizes.
    store = tmp_path / "store"
    entry = export_checkpoint(result.best, store, "tiny-loc", classifier="demo-de")
    manifest = json.loads((store / "tiny-loc" / "manifest.json").read_text())
    assert manifest["task"] == "localization" and manifest["onnx"]["output"] == "boxes"
    assert manifest["localization"] == {
        "regression": "per-class", "tuned": "all", "classifier": "demo-de"
    }  # fmt: skip
    assert manifest["num_classes"] == 8 and manifest["provenance"]["metrics"]["val_loc_error"] >= 0
    fcn = to_fully_convolutional(load_checkpoint(result.best).build_model()).eval()
    session = ort.InferenceSession(str(entry.onnx_path), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(1)
    for height, width in ((224, 224), (256, 320), (352, 256), (288, 416)):
        x = torch.randn(2, 3, height, width, generator=generator)
        (boxes,) = session.run(["boxes"], {"image": x.numpy()})
        with torch.no_grad():
            expected = fcn(x).numpy()
        assert boxes.shape == (2, 32, height // 32 - 6, width // 32 - 6)
        np.testing.assert_allclose(boxes, expected, atol=1e-4, rtol=1e-3)


def test_scr_tune_fc_from_a_store_entry(tmp_path: Path, shapes_data, classifier) -> None:
    """SCR with the convs frozen, started from the classifier's store entry (its weights read
    back from the ONNX file), through the command line."""
    store = tmp_path / "store"
    export_checkpoint(classifier, store, "tiny-cls")
    rebuilt = load_store_entry(store / "tiny-cls").model.state_dict()
    source = load_checkpoint(classifier).state_dict
    for key, value in source.items():
        assert torch.equal(rebuilt[key], value), key

    train_dir, val_dir = shapes_data
    out = tmp_path / "scr"
    args = [
        "train", "--task", "localization", "--regression", "single", "--tune", "fc",
        "--init-from", str(store / "tiny-cls"), "--config", "A", "--width", "0.0625",
        "--fc-width", "32", "--scale", "224", "--batch-size", "8", "--epochs", "1",
        "--max-steps", "2", "--workers", "0", "--device", "cpu", "--no-progress",
        "--no-tensorboard", "--data", str(train_dir), "--val-data", str(val_dir),
        "--out", str(out),
    ]  # fmt: skip
    assert cli(args) == 0
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt.localization == {"regression": "single", "tuned": "fc"}
    assert ckpt.state_dict["classifier.6.weight"].shape == (4, 32)
    for key, value in source.items():
        if key.startswith("features."):
            assert torch.equal(ckpt.state_dict[key], value), f"{key} was frozen"
    assert not torch.equal(ckpt.state_dict["classifier.3.weight"], source["classifier.3.weight"])
    assert cli(["export", str(out / "last.pt"), "--store", str(store), "--name", "tiny-scr"]) == 0
    manifest = ModelStore(store).read("tiny-scr").manifest
    assert manifest.task == "localization" and manifest.localization is not None
    assert (manifest.localization.regression, manifest.localization.tuned) == ("single", "fc")
    assert manifest.localization.classifier is None


def test_localisation_needs_a_classification_net(
    tmp_path: Path, shapes_data, classifier, capsys
) -> None:
    with pytest.raises(TrainError, match="needs --init-from"):
        train(_opts(tmp_path / "x", shapes_data, task="localization"))
    with pytest.raises(TrainError, match="is for --task localization"):
        train(_opts(tmp_path / "y", shapes_data, tune="fc"))
    with pytest.raises(TrainError, match="--val-flip is for classification"):
        train(_opts(tmp_path / "z", shapes_data, task="localization", init_from=str(classifier),
                    val_flip=True))  # fmt: skip
    train_dir, _ = shapes_data
    code = cli(["train", "--task", "localization", "--data", str(train_dir), "--boxes",
                str(tmp_path / "none"), "--init-from", str(classifier)])  # fmt: skip
    assert code == 2 and "--boxes: no folder" in capsys.readouterr().err


def test_classifier_is_for_localisation_checkpoints(tmp_path, classifier, capsys) -> None:
    code = cli(["export", str(classifier), "--store", str(tmp_path), "--name", "x",
                "--classifier", "demo-de"])  # fmt: skip
    assert code == 2 and "--classifier is for a localisation checkpoint" in capsys.readouterr().err


def test_export_checks_the_regressors_outputs(tmp_path: Path) -> None:
    pcr = build_vgg("A", 4 * 8, width=1 / 16, fc_width=32)
    with pytest.raises(ExportError, match="32 outputs \\(single regression needs 4\\)"):
        export_to_store(
            pcr,
            ModelStore(tmp_path),
            "x",
            labels=list(CLASSES),
            preprocessing=Preprocessing(mean=(0, 0, 0)),
            train_scale=TrainScale(min=256, max=256),
            source="test",
            localization=Localization(regression="single"),
        )
