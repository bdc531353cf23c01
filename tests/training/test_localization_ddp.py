"""`verydeep train --task localization` under torchrun: two gloo processes, 4 images each, take
the step one process takes with the whole batch of 8 (the same crops, boxes and masked samples),
so the Euclidean loss's averaged gradient and the logged loss are the same."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

from training.checkpoint import load_checkpoint
from verydeep.cli import main as cli

REPO = Path(__file__).resolve().parents[2]


def _first_step(out: Path) -> dict[str, str]:
    with open(out / "steps.csv", newline="") as f:
        return next(csv.DictReader(f))


def test_torchrun_localization_step_equals_single_process(tmp_path: Path, shapes_data) -> None:
    train_dir, val_dir = shapes_data
    common = [
        "--config", "A", "--width", "0.0625", "--fc-width", "32", "--data", str(train_dir),
        "--val-data", str(val_dir), "--scale-min", "224", "--scale-max", "256", "--dropout", "0",
        "--workers", "0", "--device", "cpu", "--no-progress", "--no-tensorboard",
    ]  # fmt: skip
    assert cli(["train", *common, "--init", "glorot", "--batch-size", "8", "--max-steps", "1",
                "--out", str(tmp_path / "cls")]) == 0  # fmt: skip
    args = [
        "train", "--task", "localization", "--init-from", str(tmp_path / "cls" / "last.pt"),
        *common, "--batch-size", "8", "--micro-batch", "2", "--lr", "1.0", "--max-steps", "1",
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
    assert ddp.localization == single.localization
    for key, weight in single.state_dict.items():
        scale = float((weight - ddp.state_dict[key]).abs().max())
        moved = float(weight.abs().max())
        assert scale <= 1e-4 * max(moved, 1.0), f"{key}: max |diff| {scale:.3g}"
    first_ddp, first_single = _first_step(tmp_path / "ddp"), _first_step(tmp_path / "single")
    loss_ddp, loss_single = float(first_ddp["loss"]), float(first_single["loss"])
    assert abs(loss_ddp - loss_single) <= 1e-5 * abs(loss_single), (loss_ddp, loss_single)
    assert first_ddp["masked"] == first_single["masked"]
