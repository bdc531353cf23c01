"""Localisation training's boxes: moved by the rescale, crop and flip of the augmentation
(hand-computed numbers), clipped to the crop, masked when cut off, read from the folders; the
regressor's shape and initialisation, --tune fc's frozen convs, the loss and the hits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from training.data import DataError, image_folder
from training.localization import (
    BoxedFolder,
    BoxEvalTransform,
    BoxTrainTransform,
    box_loss,
    box_outputs,
    class_boxes,
    crop_target,
    freeze_convs,
    hits,
    replace_regressor,
    rescale_boxes,
)
from training.model_setup import make_optimizer
from training.options import TrainOptions
from training.vgg import build_vgg

MEAN = (0.0, 0.0, 0.0)


def _draws(monkeypatch, top: int, left: int, flip: bool) -> None:
    """The crop's and the flip's random draws, fixed: randint gives top then left."""
    values = iter([top, left])
    monkeypatch.setattr(torch, "randint", lambda low, high, size: torch.tensor(next(values)))
    monkeypatch.setattr(torch, "rand", lambda size: torch.tensor(0.0 if flip else 0.9))


def _image(width: int, height: int, box: tuple[int, int, int, int] | None = None) -> Image.Image:
    image = Image.new("RGB", (width, height), (0, 0, 0))
    if box is not None:
        ImageDraw.Draw(image).rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill="white")
    return image


def _params(*values: float) -> list[float]:
    return [v / 224 for v in values]


def test_rescale_boxes_follows_the_image_size() -> None:
    # 400 x 300 to smallest side 224: 298 x 224 (torchvision truncates the long side).
    got = rescale_boxes(np.array([[100, 60, 300, 240]]), (400, 300), (298, 224))
    assert got[0] == pytest.approx([74.5, 44.8, 223.5, 179.2])


def test_crop_moves_the_box(monkeypatch) -> None:
    # 640 x 480 at S = 240 is 320 x 240 (scale 1/2): box (100, 120, 300, 360) -> (50, 60, 150,
    # 180); the crop at left 40, top 10 -> (10, 50, 110, 170): centre (60, 110), size 100 x 120.
    _draws(monkeypatch, top=10, left=40, flip=False)
    x, target = BoxTrainTransform(240, 240, MEAN, color_shift_std=0)(
        _image(640, 480), np.array([[100, 120, 300, 360]])
    )
    assert x.shape == (3, 224, 224)
    assert target["box"].tolist() == pytest.approx(_params(60, 110, 100, 120))
    assert bool(target["valid"])


def test_flip_mirrors_the_box(monkeypatch) -> None:
    # As above, flipped in the 224 crop: (224 - 110, 50, 224 - 10, 170) = (114, 50, 214, 170).
    _draws(monkeypatch, top=10, left=40, flip=True)
    _, target = BoxTrainTransform(240, 240, MEAN, color_shift_std=0)(
        _image(640, 480), np.array([[100, 120, 300, 360]])
    )
    assert target["box"].tolist() == pytest.approx(_params(164, 110, 100, 120))


def test_a_cut_box_is_clipped_and_a_box_outside_masked(monkeypatch) -> None:
    transform = BoxTrainTransform(240, 240, MEAN, color_shift_std=0)
    # left 100: (50 - 100, ..., 150 - 100) = (-50, 50, 50, 170), clipped to (0, 50, 50, 170).
    _draws(monkeypatch, top=10, left=96 + 4, flip=False)
    _, target = transform(_image(640, 480), np.array([[100, 120, 300, 360]]))
    assert target["box"].tolist() == pytest.approx(_params(25, 110, 50, 120))
    assert bool(target["valid"])
    # left 96: the box (50, 60, 90, 180) of the 320 x 240 image ends left of the crop.
    _draws(monkeypatch, top=10, left=96, flip=False)
    _, target = transform(_image(640, 480), np.array([[100, 120, 180, 360]]))
    assert not bool(target["valid"])


def test_the_target_is_the_box_most_inside_the_crop() -> None:
    params, valid = crop_target(np.array([[-100, 0, 10, 10], [20, 20, 60, 80], [300, 0, 400, 9]]))
    assert valid and params == pytest.approx(_params(40, 50, 40, 60))
    params, valid = crop_target(np.array([[-100, 0, -10, 10], [230, 0, 300, 50]]))
    assert not valid


@pytest.mark.parametrize("seed", range(4))
def test_the_box_follows_the_pixels(seed: int) -> None:
    """A white rectangle on black through the real random rescale, crop and flip: the target
    box is where the white pixels are (to the resampling's blur)."""
    box = (150, 90, 330, 230)
    torch.manual_seed(seed)
    x, target = BoxTrainTransform(224, 320, MEAN, color_shift_std=0)(
        _image(480, 360, box), np.array([box], dtype=float)
    )
    white = x.mean(0) > 127
    ys, xs = torch.nonzero(white, as_tuple=True)
    found = [float(xs.min()), float(ys.min()), float(xs.max()) + 1, float(ys.max()) + 1]
    params = target["box"].numpy() * 224
    expected = [params[0] - params[2] / 2, params[1] - params[3] / 2]
    expected += [params[0] + params[2] / 2, params[1] + params[3] / 2]
    assert found == pytest.approx(expected, abs=1.5)


def test_the_central_crop_keeps_every_truth_box_unclipped() -> None:
    # 640 x 480 at Q = 256: 341 x 256 (scale 341/640 across, 256/480 down); the central crop at
    # left (341 - 224) // 2 = 58, top 16. Box (100, 120, 300, 360) -> (53.28125, 64, 159.84375,
    # 192) -> (-4.71875, 48, 101.84375, 176) in the crop; the loss's target is clipped at 0.
    transform = BoxEvalTransform(256, MEAN, max_truth=2)
    x, target = transform(_image(640, 480), np.array([[100, 120, 300, 360]]))
    assert x.shape == (3, 224, 224)
    assert target["truth"][0].tolist() == pytest.approx([-4.71875, 48, 101.84375, 176])
    assert target["truth"][1].tolist() == [0, 0, 0, 0]  # padding: an empty box
    assert target["box"].tolist() == pytest.approx(_params(101.84375 / 2, 112, 101.84375, 128))


def test_boxes_are_read_for_a_folder(shapes_data, tmp_path: Path) -> None:
    train_dir, _ = shapes_data
    folder = image_folder(train_dir)
    boxed = BoxedFolder(folder)
    annotations = json.loads((train_dir / "annotations.json").read_text())["images"]
    by_file = {a["file"]: a["box"] for a in annotations}
    image, label, boxes = boxed[5]
    file = Path(folder.samples[5][0]).relative_to(train_dir).as_posix()
    assert boxes.tolist() == [by_file[file]] and label == folder.samples[5][1]
    assert image.size[0] >= boxes[0, 2] and boxed.max_boxes == 1
    # VOC XML: --boxes DIR/<class>/<stem>.xml; a missing file is named.
    xml = tmp_path / "boxes" / "circle"
    xml.mkdir(parents=True)
    (xml / "circle_00000.xml").write_text(
        "<annotation><object><name>circle</name><bndbox><xmin>11</xmin><ymin>21</ymin>"
        "<xmax>50</xmax><ymax>60</ymax></bndbox></object></annotation>"
    )
    with pytest.raises(DataError, match="no box file"):
        BoxedFolder(folder, tmp_path / "boxes")


@pytest.mark.parametrize(("regression", "outputs"), [("per-class", 32), ("single", 4)])
def test_the_regressor_replaces_fc8(regression: str, outputs: int) -> None:
    model = build_vgg("A", 8, width=1 / 16, fc_width=32)
    fc7 = model.classifier[3].weight.detach().clone()
    torch.manual_seed(0)
    layer = replace_regressor(model, box_outputs(regression, 8))
    assert model.classifier[6] is layer
    assert (layer.in_features, layer.out_features) == (32, outputs)
    assert float(layer.weight.detach().std()) == pytest.approx(1e-3, rel=0.3)
    assert not layer.bias.any()
    assert torch.equal(model.classifier[3].weight, fc7)
    assert model(torch.zeros(2, 3, 224, 224)).shape == (2, outputs)


def test_tune_fc_freezes_exactly_the_convs() -> None:
    model = build_vgg("A", 8, width=1 / 16, fc_width=32)
    frozen = freeze_convs(model)
    convs = {n for n, _ in model.named_parameters() if n.startswith("features.")}
    assert set(frozen) == convs and len(convs) == 16  # A: 8 convs, weight and bias
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"classifier.{i}.{k}" for i in (0, 3, 6) for k in ("weight", "bias")}
    optimizer = make_optimizer(model, TrainOptions(), 1e-3)
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert in_optimizer == {id(p) for p in model.classifier.parameters()}


def test_the_loss_of_a_hand_made_case() -> None:
    # K = 2, PCR: sample 0 of class 1 counts its outputs 4..7; sample 1 is masked out.
    outputs = torch.tensor([[9.0, 9, 9, 9, 0.5, 0.5, 0.2, 0.4], [0.0, 0, 0, 0, 1, 1, 1, 1]])
    target = {
        "label": torch.tensor([1, 0]),
        "box": torch.tensor([[0.4, 0.5, 0.4, 0.4], [0.5, 0.5, 0.5, 0.5]]),
        "valid": torch.tensor([True, False]),
    }
    # 0.5 * (0.1^2 + 0 + 0.2^2 + 0) = 0.025
    assert float(box_loss(outputs, target)) == pytest.approx(0.025)
    assert class_boxes(outputs, target["label"])[1].tolist() == [0, 0, 0, 0]
    # SCR: the only 4 outputs, whatever the class.
    single = outputs[:, 4:]
    assert float(box_loss(single, target)) == pytest.approx(0.025)


def test_a_hit_needs_iou_of_one_half() -> None:
    # Predicted (cx, cy, w, h) = (112, 112, 100, 100) px: the box (62, 62, 162, 162).
    pred = torch.tensor([[0.5, 0.5, 100 / 224, 100 / 224]]).repeat(3, 1)
    truth = torch.tensor(
        [
            [[62, 62, 162, 162], [0, 0, 0, 0]],  # IoU 1
            [[0, 0, 10, 10], [62, 62, 162, 113]],  # IoU 0.51 with the second
            [[62, 62, 162, 111], [0, 0, 0, 0]],  # IoU 0.49
        ],
        dtype=torch.float32,
    )
    assert hits(pred, truth).tolist() == [True, True, False]
