"""`verydeep export CHECKPOINT --store DIR --name NAME` on checkpoints of our own format."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from model_store import ModelStore, Preprocessing, TrainScale, sha256_file
from tests.conftest import TINY_LABELS, tiny_vgg
from training.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from verydeep.cli import build_parser, main


def write_checkpoint(path: Path, seed: int = 0) -> Checkpoint:
    model = tiny_vgg("E", seed=seed)
    checkpoint = Checkpoint(
        config="E",
        num_classes=len(TINY_LABELS),
        width=1 / 16,
        fc_width=64,
        labels=TINY_LABELS,
        preprocessing=Preprocessing(mean=(121.5, 110.25, 99.0)),
        train_scale=TrainScale(min=256, max=384),
        state_dict=model.state_dict(),
        training={"epoch": 3, "metrics": {"val_top1_error": 0.05}},
    )
    save_checkpoint(checkpoint, path)
    return checkpoint


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    written = write_checkpoint(tmp_path / "c.pt")
    loaded = load_checkpoint(tmp_path / "c.pt")
    assert (loaded.config, loaded.width, loaded.fc_width, loaded.labels) == (
        "E",
        1 / 16,
        64,
        TINY_LABELS,
    )
    assert loaded.preprocessing == written.preprocessing
    assert loaded.train_scale == written.train_scale
    assert loaded.training["epoch"] == 3
    model = loaded.build_model()
    for key, value in written.state_dict.items():
        assert torch.equal(model.state_dict()[key], value)


def test_export_command_writes_a_verified_entry(tmp_path: Path) -> None:
    checkpoint = write_checkpoint(tmp_path / "c.pt", seed=7)
    store = tmp_path / "store"
    assert main(["export", str(tmp_path / "c.pt"), "--store", str(store), "--name", "mine"]) == 0

    entry = ModelStore(store).read("mine")
    m = entry.manifest
    assert (m.config, m.weight_layers, m.labels) == ("E", 19, TINY_LABELS)
    assert m.preprocessing.mean == (121.5, 110.25, 99.0)
    assert m.train_scale == TrainScale(min=256, max=384)
    assert m.test_scales == [256, 320, 384]
    assert m.provenance.source == "training"
    assert m.provenance.checkpoint_sha256 == sha256_file(tmp_path / "c.pt")
    assert m.provenance.metrics == {"val_top1_error": 0.05}

    model = checkpoint.build_model().eval()
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    session = ort.InferenceSession(str(entry.onnx_path), providers=["CPUExecutionProvider"])
    (scores,) = session.run(["scores"], {"image": x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(scores[:, :, 0, 0], model(x).numpy(), rtol=1e-4, atol=1e-5)


def test_export_refuses_to_replace_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_checkpoint(tmp_path / "c.pt")
    args = ["export", str(tmp_path / "c.pt"), "--store", str(tmp_path / "s"), "--name", "m"]
    assert main(args) == 0
    assert main(args) == 2
    assert "already exists" in capsys.readouterr().err
    assert main([*args, "--force", "--test-scales", "256,300"]) == 0
    assert ModelStore(tmp_path / "s").read("m").manifest.test_scales == [256, 300]


def test_not_a_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a verydeep checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    code = main(["export", str(tmp_path / "nope.pt"), "--store", str(tmp_path), "--name", "m"])
    assert code == 2
    assert "no checkpoint at" in capsys.readouterr().err


def test_bad_name_refused_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_checkpoint(tmp_path / "c.pt")
    code = main(
        ["export", str(tmp_path / "c.pt"), "--store", str(tmp_path / "s"), "--name", "../x"]
    )
    assert code == 2
    assert "invalid model name" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("command", [["export", "c.pt"], ["import-torchvision", "vgg16"]])
@pytest.mark.parametrize(
    ("scales", "message"),
    [
        ("2_56", "'2_56' is not a comma-separated list of integers"),
        ("256,256", "'256,256' lists a scale twice"),
        ("256,5000", "[5000] out of range; each Q must be in [224, 4096]"),
    ],
)
def test_bad_test_scales_refused_by_the_command_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    command: list[str],
    scales: str,
    message: str,
) -> None:
    """--test-scales is read by the parser of every scales list (model_store.scales): Python's
    int would take '2_56' as 256, and a repeated Q would be computed twice."""
    args = [*command, "--store", str(tmp_path / "s"), "--name", "m", "--test-scales", scales]
    with pytest.raises(SystemExit) as exited:
        main(args)
    assert exited.value.code == 2
    assert f"argument --test-scales: {message}" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_store_defaults_as_the_service_does(tmp_path: Path, monkeypatch) -> None:
    """--store is VERYDEEP_MODEL_STORE, else ./model_store, for export and import-torchvision."""
    write_checkpoint(tmp_path / "c.pt")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("VERYDEEP_MODEL_STORE", raising=False)
    assert main(["export", "c.pt", "--name", "here"]) == 0
    assert ModelStore(tmp_path / "model_store").names() == ["here"]
    monkeypatch.setenv("VERYDEEP_MODEL_STORE", str(tmp_path / "elsewhere"))
    assert main(["export", "c.pt", "--name", "there"]) == 0
    assert ModelStore(tmp_path / "elsewhere").names() == ["there"]
    args = build_parser().parse_args(["import-torchvision", "vgg11", "--name", "v"])
    assert args.store == str(tmp_path / "elsewhere")


def test_export_progress_is_its_log_lines(tmp_path: Path, capsys, caplog) -> None:
    """No progress bar to interleave with the log: one line per verified size."""
    write_checkpoint(tmp_path / "c.pt")
    caplog.set_level(logging.INFO, logger="training.export")
    assert main(["export", str(tmp_path / "c.pt"), "--store", str(tmp_path), "--name", "m"]) == 0
    verified = [r.getMessage() for r in caplog.records if r.getMessage().startswith("verified")]
    assert [m.split(":")[0] for m in verified] == [
        "verified 1x3x224x224 (1 of 3)",
        "verified 2x3x256x320 (2 of 3)",
        "verified 1x3x480x640 (3 of 3)",
    ]
    assert "\r" not in capsys.readouterr().err
