"""verydeep transfer: linear SVMs on descriptor files, accuracy and average precision."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from training.transfer import TransferError, transfer
from verydeep.cli import main


def write(path: Path, centres: np.ndarray, per_class: int, spread: float, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    features, labels = [], []
    for k, centre in enumerate(centres):
        features.append(centre + spread * rng.normal(size=(per_class, len(centre))))
        labels += [f"class{k}"] * per_class
    np.savez(path, features=np.concatenate(features).astype(np.float32), labels=np.array(labels))
    return path


CENTRES = np.eye(3, 16) * 4


def test_separable_classes_are_learned_exactly(tmp_path: Path) -> None:
    train = write(tmp_path / "train.npz", CENTRES, 8, 0.3, seed=1)
    test = write(tmp_path / "test.npz", CENTRES, 5, 0.3, seed=2)
    result = transfer(train, test)
    assert result.accuracy == 1.0 and result.mean_average_precision == 1.0
    assert result.classes == ["class0", "class1", "class2"] and result.test_images == 15
    assert result.c in (0.01, 0.1, 1.0, 10.0, 100.0)


def test_overlapping_classes_score_between_chance_and_one(tmp_path: Path) -> None:
    train = write(tmp_path / "train.npz", CENTRES, 20, 3.0, seed=3)
    test = write(tmp_path / "test.npz", CENTRES, 20, 3.0, seed=4)
    result = transfer(train, test)
    assert 1 / 3 < result.accuracy < 1 and 1 / 3 < result.mean_average_precision < 1
    assert set(result.average_precision) == {"class0", "class1", "class2"}


def test_the_command_prints_a_table_and_writes_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    train = write(tmp_path / "train.npz", CENTRES, 6, 0.3, seed=1)
    test = write(tmp_path / "test.npz", CENTRES, 4, 0.3, seed=2)
    out = tmp_path / "r.json"
    assert main(["transfer", "--train", str(train), "--test", str(test), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "mean (mAP)" in printed and "accuracy 100.0%" in printed
    assert json.loads(out.read_text())["mean_average_precision"] == 1.0


def test_unusable_files_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    train = write(tmp_path / "train.npz", CENTRES, 6, 0.3, seed=1)
    short = write(tmp_path / "short.npz", np.eye(3, 8), 4, 0.3, seed=2)
    with pytest.raises(TransferError, match="differ in length: 16 .train. and 8"):
        transfer(train, short)
    unlabelled = tmp_path / "flat.npz"
    np.savez(unlabelled, features=np.zeros((3, 16), np.float32))
    with pytest.raises(TransferError, match="has no labels"):
        transfer(unlabelled, train)
    other = write(tmp_path / "other.npz", np.eye(4, 16) * 4, 3, 0.3, seed=5)
    with pytest.raises(TransferError, match="class3"):
        transfer(train, other)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    assert main(["transfer", "--train", str(tmp_path / "junk.npz"), "--test", str(train)]) == 2
    assert "not a features file" in capsys.readouterr().err
