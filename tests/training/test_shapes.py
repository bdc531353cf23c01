"""The procedural shapes dataset: classes, arbitrary sizes, determinism per seed, layout."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from torchvision.datasets import ImageFolder

from training.shapes import (
    CLASSES,
    DONE_FILE,
    MAX_SIDE,
    MIN_SIDE,
    _position,
    is_complete,
    shape_image,
    write_shapes,
)
from verydeep.cli import main as cli


def test_at_least_eight_sorted_classes() -> None:
    assert len(CLASSES) >= 8
    assert list(CLASSES) == sorted(CLASSES)  # ImageFolder's class index order
    assert {"circle", "square", "triangle", "star", "cross", "hexagon"} <= set(CLASSES)


def test_same_seed_same_image_other_seed_other_image() -> None:
    a = np.asarray(shape_image(3, 2, 5))
    assert np.array_equal(a, np.asarray(shape_image(3, 2, 5)))
    assert not np.array_equal(a, np.asarray(shape_image(4, 2, 5)))
    assert not np.array_equal(a, np.asarray(shape_image(3, 2, 6)))


def test_arbitrary_sizes_and_aspect_ratios() -> None:
    sizes = {shape_image(0, c, i).size for c in range(len(CLASSES)) for i in range(3)}
    assert len(sizes) > 15
    for w, h in sizes:
        assert MIN_SIDE <= w <= MAX_SIDE and MIN_SIDE <= h <= MAX_SIDE
    aspects = [w / h for w, h in sizes]
    assert min(aspects) < 0.85 and max(aspects) > 1.15


def test_images_are_rgb_and_not_flat() -> None:
    for c in range(len(CLASSES)):
        image = shape_image(1, c, 0)
        assert image.mode == "RGB"
        assert np.asarray(image).std() > 5


def test_write_shapes_is_an_image_folder_and_deterministic(tmp_path: Path) -> None:
    a = write_shapes(tmp_path / "a", 2, seed=5, workers=2, progress=False)
    b = write_shapes(tmp_path / "b", 2, seed=5, workers=1, progress=False)
    folder = ImageFolder(str(a))
    assert folder.classes == list(CLASSES)
    assert len(folder) == 2 * len(CLASSES)
    assert is_complete(a, 2, 5) and not is_complete(a, 2, 6) and not is_complete(a, 3, 5)
    for path, _ in folder.samples:
        other = b / Path(path).relative_to(a)
        assert Path(path).read_bytes() == other.read_bytes()
    assert not list(tmp_path.glob(".*tmp*"))  # the temporary folder was renamed into place


def test_write_shapes_refuses_a_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "mine.txt").write_text("keep")
    with pytest.raises(FileExistsError):
        write_shapes(tmp_path / "x", 1, seed=0, progress=False)
    assert (tmp_path / "x" / "mine.txt").exists()


def test_make_shapes_into_a_non_empty_folder_needs_force(tmp_path: Path, capsys) -> None:
    out = tmp_path / "shapes"
    args = ["make-shapes", str(out), "--per-class", "1", "--workers", "1"]
    assert cli([*args, "--seed", "1"]) == 0
    first = sorted(p.read_bytes() for p in out.rglob("*.jpg"))
    capsys.readouterr()
    assert cli([*args, "--seed", "2"]) == 2
    assert "already holds a shapes folder; --force replaces it" in capsys.readouterr().err
    assert sorted(p.read_bytes() for p in out.rglob("*.jpg")) == first  # untouched
    assert cli([*args, "--seed", "2", "--force"]) == 0
    assert is_complete(out, 1, 2)


def test_force_never_deletes_a_folder_make_shapes_did_not_write(tmp_path: Path, capsys) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "photo.jpg").write_bytes(b"keep")
    code = cli(["make-shapes", str(tmp_path / "mine"), "--per-class", "1", "--force"])
    assert code == 2 and "not a shapes folder" in capsys.readouterr().err
    assert (tmp_path / "mine" / "photo.jpg").read_bytes() == b"keep"


def test_make_shapes_command(tmp_path: Path) -> None:
    out = tmp_path / "shapes"
    run = subprocess.run(
        [sys.executable, "-m", "verydeep.cli", "make-shapes", str(out), "--per-class", "1",
         "--seed", "9", "--workers", "1"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert (out / DONE_FILE).exists()
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == list(CLASSES)
    assert "torch" not in run.stderr


@pytest.mark.parametrize("side", [240, 333, 480])
@pytest.mark.parametrize("radius", [20.0, 60.0, 100.0, 150.0, 300.0])
def test_objects_sit_near_the_centre_and_inside_the_image(side: int, radius: float) -> None:
    rng = np.random.default_rng(int(side + radius))
    centres = np.array([_position(rng, side, radius) for _ in range(400)])
    assert centres.min() >= round(0.32 * side) and centres.max() <= round(0.68 * side)
    if 1.15 * radius <= 0.32 * side:  # room to move: spread over the band, not a fixed point
        assert centres.max() - centres.min() > 0.25 * side
    if 1.15 * radius <= side / 2:  # the object (1.15 x radius with its outline) stays inside
        assert centres.min() >= int(1.15 * radius) and centres.max() <= side - int(1.15 * radius)
    else:
        assert set(centres) == {side // 2} or np.ptp(centres) <= 1
