"""The training loop: loss falls, resume is bit-exact, torchrun gradients equal one process's,
fine-tuning and A-initialisation from checkpoints, the command line, and export of the result."""

from __future__ import annotations

import csv
import logging
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from model_store import ModelStore
from training.checkpoint import load_checkpoint
from training.distributed import Dist
from training.export_checkpoint import export_checkpoint
from training.model_setup import build_model
from training.options import SMALL_NET_RECIPE, TrainOptions, TrainResult
from training.run_logs import Logs
from training.shapes import CLASSES
from training.train import train
from verydeep.cli import main as cli

REPO = Path(__file__).resolve().parents[2]


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
        scale_max=256,
        epochs=3,
        batch_size=8,
        micro_batch=4,
        workers=0,
        init="glorot",
        seed=0,
        device="cpu",
        progress=False,
        tensorboard=False,
    )
    return replace(opts, **changes)


def _step_rows(out: Path) -> list[list[str]]:
    with open(out / "steps.csv", newline="") as f:
        return [row[:5] for row in list(csv.reader(f))[1:]]  # all but the timing column


def test_short_run_loss_falls(tmp_path: Path, two_tone_data) -> None:
    result = train(
        _opts(tmp_path / "run", two_tone_data, config="D", epochs=5, lr=0.03, input_std="data")
    )
    losses = [h["train_loss"] for h in result.history]
    assert len(losses) == 5
    assert losses[0] == pytest.approx(np.log(2), abs=0.05)  # Glorot D starts at chance
    assert losses[-1] < 0.8 * losses[0], losses
    ckpt = load_checkpoint(result.last)
    assert all(s > 20 for s in ckpt.preprocessing.std)  # --input-std data is recorded


def test_short_run_writes_its_outputs(tmp_path: Path, shapes_data) -> None:
    out = tmp_path / "run"
    result = train(_opts(out, shapes_data, epochs=2, tensorboard=True))
    assert result.stopped == "epochs"
    assert len(result.history) == 2
    for name in ("last.pt", "best.pt", "metrics.csv", "steps.csv", "curves.png"):
        assert (out / name).is_file(), name
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and 0 <= float(rows[-1]["val_top1_error"]) <= 1
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt.labels == list(CLASSES)
    assert ckpt.preprocessing.scale == 1 and ckpt.preprocessing.std == (1, 1, 1)
    assert all(40 < m < 220 for m in ckpt.preprocessing.mean)  # the training-set mean RGB
    assert (ckpt.train_scale.min, ckpt.train_scale.max) == (224, 256)
    assert ckpt.training["epoch"] == 2 and ckpt.training["global_step"] == 6
    assert ckpt.training["metrics"]["val_method"] == "dense, single scale Q=240"


def test_resume_continues_bit_for_bit(tmp_path: Path, shapes_data, monkeypatch) -> None:
    """An uninterrupted run of 8 steps against one stopped by SIGTERM after step 2 (mid-epoch),
    resumed with a data worker and stopped at step 5, then resumed to step 8 (dropout on)."""
    full = train(_opts(tmp_path / "full", shapes_data, max_steps=8))
    assert full.stopped == "max_steps"

    out = tmp_path / "part"
    original_step = Logs.step

    def step_then_sigterm(self, row):
        original_step(self, row)
        if row["step"] == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(Logs, "step", step_then_sigterm)
    part = train(_opts(out, shapes_data, max_steps=8))
    monkeypatch.setattr(Logs, "step", original_step)
    assert part.stopped == "signal" and part.global_step == 2
    assert signal.getsignal(signal.SIGTERM) is not None  # handlers restored

    resumed = train(_opts(out, shapes_data, resume="auto", max_steps=5, workers=1))
    assert resumed.global_step == 5
    rest = train(_opts(out, shapes_data, resume="auto", max_steps=8))
    assert rest.global_step == 8

    assert _step_rows(out) == _step_rows(tmp_path / "full")
    a = load_checkpoint(tmp_path / "full" / "last.pt")
    b = load_checkpoint(out / "last.pt")
    for key, value in a.state_dict.items():
        assert torch.equal(value, b.state_dict[key]), key
    assert _untimed(a.training["history"]) == _untimed(b.training["history"])
    assert len(a.training["history"]) == 2


def _untimed(history: list[dict]) -> list[dict]:
    timing = ("epoch_seconds", "images_per_s", "wall_seconds")
    return [{k: v for k, v in h.items() if k not in timing} for h in history]


def _gradient(w0: dict, w1: dict, lr: float, wd: float) -> dict:
    """The first SGD step: w1 = w0 - lr * (g + wd * w0), momentum buffers start at zero."""
    return {k: (w0[k] - w1[k]) / lr - wd * w0[k] for k in w0}


def test_torchrun_gradients_equal_single_process(tmp_path: Path, shapes_data) -> None:
    """Two gloo processes, 4 images each (2 micro-batches of 2), against one process with the
    whole batch of 8: the same images and crops, dropout off, so the same averaged gradient."""
    train_dir, val_dir = shapes_data
    args = [
        "train", "--config", "A", "--width", "0.0625", "--fc-width", "32", "--data",
        str(train_dir), "--val-data", str(val_dir), "--scale-min", "224", "--scale-max", "256",
        "--batch-size", "8", "--micro-batch", "2", "--dropout", "0", "--lr", "1.0",
        "--max-steps", "1", "--workers", "0", "--init", "glorot", "--device", "cpu",
        "--no-progress", "--no-tensorboard",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
         "-m", "verydeep.cli", *args, "--out", str(tmp_path / "ddp")],
        capture_output=True, text=True, timeout=300, env=env, cwd=REPO,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    assert cli([*args, "--micro-batch", "8", "--out", str(tmp_path / "single")]) == 0

    ddp = load_checkpoint(tmp_path / "ddp" / "last.pt")
    single = load_checkpoint(tmp_path / "single" / "last.pt")
    assert ddp.training["world_size"] == 2 and single.training["world_size"] == 1
    opts = _opts(tmp_path, shapes_data, dropout=0.0)
    w0 = {k: v.detach().clone() for k, v in build_model(opts, 8, Dist()).state_dict().items()}
    g_ddp = _gradient(w0, ddp.state_dict, 1.0, 5e-4)
    g_single = _gradient(w0, single.state_dict, 1.0, 5e-4)
    for key in w0:
        scale = float(g_single[key].abs().max())
        assert scale > 0, f"{key}: no gradient"
        diff = float((g_ddp[key] - g_single[key]).abs().max())
        assert diff <= 1e-3 * scale + 1e-6, f"{key}: max |diff| {diff:.3g} vs max |g| {scale:.3g}"
    # And the optimiser step used the whole batch's loss: the same logged loss.
    assert _step_rows(tmp_path / "ddp")[0][3][:5] == _step_rows(tmp_path / "single")[0][3][:5]


def test_fine_tune_and_init_from_a(tmp_path: Path, shapes_data) -> None:
    a = train(_opts(tmp_path / "a", shapes_data, epochs=1, max_steps=1))
    a_ckpt = load_checkpoint(a.last)

    tuned = train(
        _opts(tmp_path / "s256", shapes_data, scale_min=256, scale_max=256, init_from=str(a.last),
              max_steps=1)
    )  # fmt: skip
    t = load_checkpoint(tuned.last)
    assert t.training["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-3)
    assert t.train_scale.min == t.train_scale.max == 256

    opts = _opts(tmp_path / "d", shapes_data, config="D", init_from_a=str(a.last))
    d = build_model(opts, len(CLASSES), Dist())
    assert torch.equal(d.features[0].weight, a_ckpt.state_dict["features.0.weight"])
    assert torch.equal(d.features[5].weight, a_ckpt.state_dict["features.3.weight"])  # conv2_1
    assert torch.equal(d.classifier[6].weight, a_ckpt.state_dict["classifier.6.weight"])


def test_command_line(tmp_path: Path, capsys) -> None:
    """`verydeep train --dataset shapes` (generated into a cache), `--data` with a held-out
    validation share, and one-line errors."""
    common = ["--width", "0.0625", "--fc-width", "32", "--scale", "224", "--batch-size", "8",
              "--workers", "0", "--init", "glorot", "--device", "cpu", "--no-progress",
              "--no-tensorboard"]  # fmt: skip
    cache = tmp_path / "cache"
    assert cli(["train", "--dataset", "shapes", "--shapes-per-class", "2",
                "--shapes-val-per-class", "1", "--data-cache", str(cache), "--epochs", "1",
                "--micro-batch", "4", "--out", str(tmp_path / "s"), *common]) == 0  # fmt: skip
    assert (cache / "shapes-2-seed0").is_dir() and (cache / "shapes-1-seed1").is_dir()
    ckpt = load_checkpoint(tmp_path / "s" / "best.pt")
    assert ckpt.training["metrics"]["epochs"] == 1

    assert cli(["train", "--data", str(cache / "shapes-2-seed0"), "--val-fraction", "0.5",
                "--epochs", "1", "--out", str(tmp_path / "h"), *common]) == 0  # fmt: skip
    capsys.readouterr()

    code = cli(["train", "--data", str(cache / "shapes-2-seed0"), "--micro-batch", "3",
                "--out", str(tmp_path / "bad"), *common])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "--micro-batch 3 must divide" in err and "Traceback" not in err
    assert cli(["train", "--out", str(tmp_path / "none")]) == 2
    assert "--data" in capsys.readouterr().err

    missing = tmp_path / "missing-a.pt"
    code = cli(["train", "--data", str(cache / "shapes-2-seed0"), "--init-from-a", str(missing),
                "--out", str(tmp_path / "from-a"), *common])  # fmt: skip
    assert code == 2 and f"--init-from-a: no checkpoint at {missing}" in capsys.readouterr().err
    assert not (tmp_path / "from-a").exists()  # refused before anything is written


def test_flags_default_to_the_options_defaults(tmp_path: Path, monkeypatch) -> None:
    """Each flag's default is the TrainOptions field's; a resumed run takes the flags given."""
    seen: list[tuple[TrainOptions, list[str]]] = []

    def fake_train(opts: TrainOptions, overrides: list[str]) -> TrainResult:
        seen.append((opts, sorted(overrides)))
        return TrainResult(out=tmp_path, last=tmp_path / "last.pt", best=None, stopped="epochs")

    monkeypatch.setattr("training.train.train", fake_train)
    assert cli(["train", "--data", "d"]) == 0
    assert seen[-1] == (TrainOptions(data="d"), ["progress", "tensorboard"])
    assert cli(["train", "--resume", "--epochs", "74", "--no-amp", "--no-progress", "--scale",
                "384"]) == 0  # fmt: skip
    expected = TrainOptions(resume="auto", epochs=74, amp=False, progress=False, scale_min=384,
                            scale_max=384)  # fmt: skip
    assert seen[-1] == (expected, ["amp", "epochs", "progress", "tensorboard"])


def test_export_of_a_trained_checkpoint(tmp_path: Path, shapes_data) -> None:
    result = train(_opts(tmp_path / "run", shapes_data, config="D", epochs=1))
    store = tmp_path / "store"
    export_checkpoint(result.best, store, "trained-d")
    entry = ModelStore(store).read("trained-d")
    m = entry.manifest
    assert m.config == "D" and m.weight_layers == 16 and m.labels == list(CLASSES)
    assert m.test_scales == [224, 240, 256]
    assert m.provenance.source == "training"
    assert 0 <= m.provenance.metrics["val_top1_error"] <= 1
    ckpt = load_checkpoint(result.best)
    assert m.preprocessing == ckpt.preprocessing
    session = ort.InferenceSession(str(entry.onnx_path), providers=["CPUExecutionProvider"])
    (scores,) = session.run(["scores"], {"image": np.zeros((1, 3, 256, 320), np.float32)})
    assert scores.shape == (1, len(CLASSES), 2, 4)


def test_a_reduced_width_takes_the_small_net_recipe(tmp_path: Path, monkeypatch, caplog) -> None:
    """Below --width 1 the options not given take the demo models' recipe, said in one line;
    options given are kept, and full width or a resumed run keep the paper's defaults."""
    seen: list[TrainOptions] = []

    def fake_train(opts: TrainOptions, overrides: list[str]) -> TrainResult:
        seen.append(opts)
        return TrainResult(out=tmp_path, last=tmp_path / "last.pt", best=None, stopped="epochs")

    monkeypatch.setattr("training.train.train", fake_train)
    caplog.set_level(logging.INFO, logger="training.train")
    assert cli(["train", "--data", "d", "--width", "0.125"]) == 0
    assert seen[-1] == TrainOptions(data="d", width=0.125, **SMALL_NET_RECIPE)
    assert caplog.messages[-1].startswith(
        "--width 0.125 is below 1: --init glorot --input-std data --clip-grad-norm 5 --dropout 0,"
    )
    assert cli(["train", "--data", "d", "--width", "0.5", "--init", "normal", "--dropout",
                "0.5"]) == 0  # fmt: skip
    assert (seen[-1].init, seen[-1].dropout, seen[-1].input_std) == ("normal", 0.5, "data")
    assert "below 1: --input-std data --clip-grad-norm 5, the" in caplog.messages[-1]
    caplog.clear()
    assert cli(["train", "--data", "d"]) == 0
    assert cli(["train", "--resume", "--width", "0.125"]) == 0
    assert seen[-2] == TrainOptions(data="d") and seen[-1].init == "normal"
    assert not caplog.messages


def test_the_tiny_first_run_trains_with_the_defaults(tmp_path: Path, two_tone_data) -> None:
    """A narrow net with nothing but its widths given: no nan, and its loss falls."""
    train_dir, val_dir = two_tone_data
    out = tmp_path / "run"
    args = ["train", "--data", str(train_dir), "--val-data", str(val_dir), "--width", "0.125",
            "--fc-width", "64", "--scale", "224", "--batch-size", "8", "--epochs", "3",
            "--workers", "0", "--no-progress", "--no-tensorboard", "--out", str(out)]  # fmt: skip
    assert cli(args) == 0
    losses = [float(row[3]) for row in _step_rows(out)]
    assert len(losses) == 6 and all(np.isfinite(losses))
    assert losses[0] == pytest.approx(np.log(2), abs=0.1)  # starts near chance
    assert losses[-1] < 0.95 * losses[0], losses


def test_the_issues_first_run_on_shapes_finishes(tmp_path: Path) -> None:
    """The first run as a newcomer types it: the paper's defaults diverged at step 3."""
    args = ["train", "--config", "A", "--width", "0.125", "--fc-width", "64", "--dataset",
            "shapes", "--shapes-per-class", "4", "--shapes-val-per-class", "2", "--epochs", "1",
            "--batch-size", "8", "--data-cache", str(tmp_path / "cache"), "--workers", "0",
            "--no-progress", "--no-tensorboard", "--out", str(tmp_path / "run")]  # fmt: skip
    assert cli(args) == 0
    losses = [float(row[3]) for row in _step_rows(tmp_path / "run")]
    assert len(losses) == 4 and all(loss < 3 for loss in losses), losses  # chance: ln 8 = 2.08


def test_divergence_names_what_helps(tmp_path: Path, shapes_data, capsys) -> None:
    """The paper's init on raw pixels at a reduced width, no clipping: nan within a few
    steps, and the message names the recipe's flags not in effect."""
    train_dir, val_dir = shapes_data
    code = cli(["train", "--data", str(train_dir), "--val-data", str(val_dir), "--width", "0.125",
                "--fc-width", "64", "--batch-size", "8", "--init", "normal", "--input-std", "1",
                "--clip-grad-norm", "0", "--dropout", "0.5", "--workers", "0", "--no-progress",
                "--no-tensorboard", "--out", str(tmp_path / "run")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "training diverged; try --init glorot --input-std data" in err
    assert "--clip-grad-norm 5 (the small-net recipe" in err and "lower --lr than 0.01" in err
