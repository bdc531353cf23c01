"""The procedural shapes dataset: classes (the demo ones and new kinds), arbitrary sizes,
determinism per seed, layout, and the boxes of annotations.json."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter
from torchvision.datasets import ImageFolder

from training import shapes
from training.shapes import (
    ALL_CLASSES,
    ANNOTATIONS_FILE,
    CLASSES,
    DONE_FILE,
    MAX_SIDE,
    MIN_SIDE,
    NEW_CLASSES,
    _position,
    annotated_image,
    image_rng,
    is_complete,
    render_annotated,
    select_classes,
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


# The demo models were trained, and the docs measured, on these exact files: a default run must
# keep writing them byte for byte (sha256 over each file's path and sha256, in path order,
# recorded from the generator before the classes beyond the demo eight were added).
DEFAULT_RUN_SHA256 = {
    (0, 2): "6171dffa4f6a5d36de8dd920487273c16d18680688cf22ed327c06edbfce8dcf",
    (7, 1): "d7c895ebb2e5d7ac22f1723d608c2bb02f3e1430ea2cbe7a43c81de70ab25ef6",
}


def _folder_sha256(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.jpg")):
        h.update(p.relative_to(root).as_posix().encode())
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


@pytest.mark.parametrize(("seed", "per_class"), sorted(DEFAULT_RUN_SHA256))
def test_a_default_run_writes_the_same_files_as_before(
    tmp_path: Path, seed: int, per_class: int
) -> None:
    root = write_shapes(tmp_path / "s", per_class, seed, workers=1, progress=False)
    assert _folder_sha256(root) == DEFAULT_RUN_SHA256[seed, per_class]
    assert json.loads((root / DONE_FILE).read_text())["classes"] == list(CLASSES)


def test_new_classes_are_new_kinds_in_the_same_style() -> None:
    assert len(NEW_CLASSES) >= 6
    assert not set(NEW_CLASSES) & set(CLASSES)
    assert ALL_CLASSES[: len(CLASSES)] == CLASSES  # the demo classes keep their seeds
    for name in NEW_CLASSES:
        c = ALL_CLASSES.index(name)
        sizes = set()
        for i in range(3):
            image = shape_image(2, c, i)
            assert image.mode == "RGB" and np.asarray(image).std() > 5
            assert min(image.size) >= MIN_SIDE and max(image.size) <= MAX_SIDE
            sizes.add(image.size)
        assert len(sizes) == 3
        assert np.array_equal(np.asarray(shape_image(2, c, 0)), np.asarray(shape_image(2, c, 0)))


def test_an_image_does_not_depend_on_the_other_classes_written(tmp_path: Path) -> None:
    alone = write_shapes(tmp_path / "a", 2, 3, classes=["star"], workers=1, progress=False)
    mixed = write_shapes(
        tmp_path / "b", 2, 3, classes="pentagon,star,arrow", workers=1, progress=False
    )
    assert sorted(p.name for p in mixed.iterdir() if p.is_dir()) == ["arrow", "pentagon", "star"]
    assert ImageFolder(str(mixed)).classes == ["arrow", "pentagon", "star"]
    for path in (alone / "star").iterdir():
        assert path.read_bytes() == (mixed / "star" / path.name).read_bytes()
    assert is_complete(mixed, 2, 3, "arrow,pentagon,star")
    assert not is_complete(mixed, 2, 3) and not is_complete(mixed, 2, 3, ["star"])


def test_unknown_classes_are_refused_with_the_known_ones(tmp_path: Path, capsys) -> None:
    with pytest.raises(ValueError, match="unknown shape class 'blob'; known: arrow, circle"):
        select_classes("star,blob")
    code = cli(["make-shapes", str(tmp_path / "s"), "--per-class", "1", "--classes", "blob,x"])
    err = capsys.readouterr().err
    assert code == 2 and "unknown shape classes 'blob', 'x'" in err
    assert all(name in err for name in ALL_CLASSES)
    assert not (tmp_path / "s").exists()


def test_annotations_follow_the_format_for_every_image(tmp_path: Path) -> None:
    out = tmp_path / "s"
    assert cli(["make-shapes", str(out), "--per-class", "2", "--seed", "4", "--workers", "2",
                "--classes", "circle,crescent,arrow"]) == 0  # fmt: skip
    doc = json.loads((out / ANNOTATIONS_FILE).read_text())
    assert list(doc) == ["images"]
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.jpg"))
    assert [r["file"] for r in doc["images"]] == files  # every image, in path order
    for record in doc["images"]:
        assert list(record) == ["file", "label", "box"]
        assert record["label"] == record["file"].split("/")[0]
        assert record["file"] == f"{record['label']}/{record['label']}_{record['file'][-9:]}"
        x0, y0, x1, y1 = record["box"]
        assert all(type(v) is int for v in record["box"])
        width, height = Image.open(out / record["file"]).size
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
        assert (x1 - x0) * (y1 - y0) > 0.03 * width * height  # the shape, not a speck


class _QuietRng:
    """The generator's very draws, with every normal draw zeroed: no pixel noise, while each
    other random choice (size, placement, colours) is the same as with the plain generator."""

    def __init__(self, rng: np.random.Generator) -> None:
        self._rng = rng

    def normal(self, *args, **kwargs):
        return self._rng.normal(*args, **kwargs) * 0

    def __getattr__(self, name: str):
        return getattr(self._rng, name)


def _painted(monkeypatch: pytest.MonkeyPatch, c: int, i: int, value: int):
    """Image ``i`` of class ``c`` with its shape and outline painted ``value`` and no blur or
    noise; the box ``render_annotated`` gives for it."""
    original = shapes._paint
    colour = (value, value, value)

    def paint(rng, region):
        p = original(rng, region)  # the same draws
        outline = None if p.outline is None else (p.outline[0], colour)
        return dataclasses.replace(p, colour=colour, outline=outline)

    monkeypatch.setattr(shapes, "_paint", paint)
    monkeypatch.setattr(shapes.ImageFilter, "GaussianBlur", lambda r: ImageFilter.BoxBlur(0))
    image, box = render_annotated(ALL_CLASSES[c], _QuietRng(image_rng(11, c, i)))
    monkeypatch.undo()
    return np.asarray(image, np.int16), box


@pytest.mark.parametrize("name", ALL_CLASSES)
def test_the_box_is_the_shapes_tight_box(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """The pixels that change when the shape (and its outline) goes from black to white are
    exactly those the shape covers: their bounding box must be the annotation."""
    c = ALL_CLASSES.index(name)
    for i in range(4):
        black, box = _painted(monkeypatch, c, i, 0)
        white, same_box = _painted(monkeypatch, c, i, 255)
        assert box == same_box
        changed = np.abs(white - black).max(axis=2) > 0
        ys, xs = np.nonzero(changed)
        assert (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1) == box
        # and the box the file's own generator gives is this one
        assert annotated_image(11, c, i)[1] == box
