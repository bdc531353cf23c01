"""Ground-truth boxes from annotations.json and ILSVRC's VOC XML files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from model_store.annotations import (
    AnnotationError,
    folder_annotations,
    read_annotations_json,
    read_voc,
)

VOC = """<annotation><folder>val</folder><filename>{stem}</filename>
<size><width>500</width><height>375</height><depth>3</depth></size>
<object><name>{label}</name><bndbox><xmin>1</xmin><ymin>11</ymin><xmax>100</xmax>
<ymax>200</ymax></bndbox></object>
<object><name>n99999999</name><bndbox><xmin>5</xmin><ymin>5</ymin><xmax>50</xmax>
<ymax>50</ymax></bndbox></object>
<object><name>{label}</name><bndbox><xmin>201</xmin><ymin>101</ymin><xmax>300</xmax>
<ymax>300</ymax></bndbox></object></annotation>"""


def _json_folder(root: Path, images: list[dict]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "annotations.json").write_text(json.dumps({"images": images}))
    return root


def test_annotations_json_as_make_shapes_writes_it(tmp_path: Path) -> None:
    root = _json_folder(tmp_path, [
        {"file": "star/star_00000.jpg", "label": "star", "box": [3, 4, 50, 60]},
        {"file": "ring/ring_00000.jpg", "label": "ring", "boxes": [[0, 0, 9, 9], [10, 10, 20, 20]]},
    ])  # fmt: skip
    got = folder_annotations(root, ["star/star_00000.jpg", "ring/ring_00000.jpg"])
    assert got["star/star_00000.jpg"].boxes == ((3.0, 4.0, 50.0, 60.0),)
    assert got["star/star_00000.jpg"].label == "star"
    assert len(got["ring/ring_00000.jpg"].boxes) == 2


def test_voc_boxes_are_made_exclusive_and_other_classes_left_out(tmp_path: Path) -> None:
    boxes_dir = tmp_path / "boxes"
    (boxes_dir / "n01440764").mkdir(parents=True)
    (boxes_dir / "n01440764" / "n01440764_10026.xml").write_text(
        VOC.format(stem="n01440764_10026", label="n01440764"))  # fmt: skip
    (boxes_dir / "ILSVRC2012_val_00000001.xml").write_text(
        VOC.format(stem="ILSVRC2012_val_00000001", label="n01751748"))  # fmt: skip
    assert read_voc(boxes_dir / "ILSVRC2012_val_00000001.xml")[0] == (
        "n01751748", (0.0, 10.0, 100.0, 200.0))  # fmt: skip
    files = ["n01440764/n01440764_10026.JPEG", "n01751748/ILSVRC2012_val_00000001.JPEG"]
    got = folder_annotations(tmp_path / "images", files, boxes_dir)
    assert got[files[0]].boxes == ((0.0, 10.0, 100.0, 200.0), (200.0, 100.0, 300.0, 300.0))
    assert got[files[1]].label == "n01751748" and len(got[files[1]].boxes) == 2


# ILSVRC 2012's box file of its first validation image as published (tabs, <source>, <pose>,
# <truncated>, <difficult>), the one real file of the format the tests hold: class n01751748
# (sea snake), 500 x 375, one box of 1-based inclusive pixels.
ILSVRC2012_VAL_00000001 = (
    "<annotation>\n\t<folder>val</folder>\n\t<filename>ILSVRC2012_val_00000001</filename>\n"
    "\t<source>\n\t\t<database>ILSVRC_2012</database>\n\t</source>\n\t<size>\n"
    "\t\t<width>500</width>\n\t\t<height>375</height>\n\t\t<depth>3</depth>\n\t</size>\n"
    "\t<segmented>0</segmented>\n\t<object>\n\t\t<name>n01751748</name>\n"
    "\t\t<pose>Unspecified</pose>\n\t\t<truncated>0</truncated>\n"
    "\t\t<difficult>0</difficult>\n\t\t<bndbox>\n\t\t\t<xmin>111</xmin>\n"
    "\t\t\t<ymin>108</ymin>\n\t\t\t<xmax>441</xmax>\n\t\t\t<ymax>193</ymax>\n"
    "\t\t</bndbox>\n\t</object>\n</annotation>\n"
)


def test_ilsvrcs_published_box_file_is_read(tmp_path: Path) -> None:
    boxes_dir = tmp_path / "val-boxes"
    boxes_dir.mkdir()
    (boxes_dir / "ILSVRC2012_val_00000001.xml").write_text(ILSVRC2012_VAL_00000001)
    file = "n01751748/ILSVRC2012_val_00000001.JPEG"
    (got,) = folder_annotations(tmp_path / "val", [file], boxes_dir).values()
    # pixels 111..441 inclusive, 1-based: x0 = 110 and x1 = 441 exclusive, 0-based
    assert got.label == "n01751748" and got.boxes == ((110.0, 107.0, 441.0, 193.0),)


def test_missing_and_bad_box_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(AnnotationError, match="has no annotations.json; .* --boxes DIR"):
        folder_annotations(tmp_path, ["a/x.jpg"])
    root = _json_folder(tmp_path / "j", [{"file": "a/x.jpg", "label": "a", "box": [0, 0, 5, 5]}])
    with pytest.raises(AnnotationError, match="no box for a/y.jpg"):
        folder_annotations(root, ["a/x.jpg", "a/y.jpg"])
    with pytest.raises(AnnotationError, match="no box file for a/x.jpg"):
        folder_annotations(root, ["a/x.jpg"], tmp_path / "nowhere")
    bad = _json_folder(tmp_path / "bad", [{"file": "a/x.jpg", "label": "a", "box": [5, 0, 5, 5]}])
    with pytest.raises(AnnotationError, match="empty or negative"):
        read_annotations_json(bad / "annotations.json")
    (tmp_path / "broken.xml").write_text("<annotation><object>")
    with pytest.raises(AnnotationError, match="not a readable VOC XML"):
        read_voc(tmp_path / "broken.xml")
    (tmp_path / "other.xml").write_text(VOC.format(stem="x", label="n0"))
    (tmp_path / "n1").mkdir()
    with pytest.raises(AnnotationError, match="no box of class 'n1'"):
        folder_annotations(tmp_path, ["n1/other.JPEG"], tmp_path)


def test_make_shapes_annotations_are_read(tmp_path: Path) -> None:
    from training.shapes import write_shapes

    write_shapes(tmp_path, per_class=1, seed=3)
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.jpg"))
    got = folder_annotations(tmp_path, files)
    assert len(got) == len(files) == 8
    for annotation in got.values():
        ((x0, y0, x1, y1),) = annotation.boxes
        assert 0 <= x0 < x1 and 0 <= y0 < y1
