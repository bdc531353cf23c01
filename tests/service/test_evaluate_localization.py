"""`verydeep evaluate --task localization` measures what /localize answers: the same boxes image
by image, the errors ILSVRC's rule gives them, and the central crop computed here with
onnxruntime directly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from model_store import Localization, ModelStore, TrainScale
from model_store.imaging import rescale, to_input
from service.core.evaluate import EvaluationError
from service.core.evaluate_localization import evaluate_localization
from service.core.localize import Localized
from service.http.app import create_app
from tests.conftest import TINY_PREPROCESSING, tiny_vgg
from tests.service.helpers import LOGIT_GAIN, TestClient, box_vgg, settings_for
from tests.service.test_merging import iou
from training.export import export_to_store
from training.shapes import CLASSES, write_shapes
from verydeep.cli import main

PER_CLASS = 1


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("evaloc") / "shapes"
    write_shapes(root, PER_CLASS, seed=4242, workers=1, progress=False)
    return root


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> ModelStore:
    store = ModelStore(tmp_path_factory.mktemp("evaloc") / "store")
    torch.manual_seed(0)
    classifier = tiny_vgg("D", 21, num_classes=len(CLASSES))
    with torch.no_grad():
        classifier.classifier[6].weight.mul_(LOGIT_GAIN)
    common = {
        "labels": list(CLASSES),
        "preprocessing": TINY_PREPROCESSING,
        "train_scale": TrainScale(min=256, max=256),
        "source": "test",
    }
    export_to_store(classifier, store, "d", **common)  # type: ignore[arg-type]
    for name, regression, seed in (("loc", "per-class", 22), ("loc-scr", "single", 23)):
        loc = Localization(regression=regression, classifier="d")  # type: ignore[arg-type]
        model = box_vgg(seed, loc.box_channels(len(CLASSES)))
        export_to_store(model, store, name, localization=loc, **common)  # type: ignore[arg-type]
    return store


def api_answers(store: ModelStore, folder: Path, **params: str) -> dict[Path, dict]:
    answers = {}
    with TestClient(create_app(settings_for(store.root, warmup=False))) as client:
        for path in sorted(folder.glob("*/*.jpg")):
            response = client.post(
                "/localize",
                params=params,
                files={"image": (path.name, path.read_bytes(), "image/jpeg")},
            )
            assert response.status_code == 200, response.text
            answers[path] = response.json()
    return answers


def truth_boxes(folder: Path) -> dict[Path, list[list[float]]]:
    images = json.loads((folder / "annotations.json").read_text())["images"]
    return {folder / item["file"]: [item["box"]] for item in images}


def central_crop_by_hand(store: ModelStore, name: str, path: Path, label: int) -> np.ndarray:
    """Table 8's protocol written out: Q = S, the central 224 crop, the class's box."""
    from PIL import Image

    entry = store.read(name)
    image = Image.open(path).convert("RGB")
    q = entry.manifest.train_scale.single_test_scale()
    x = to_input(rescale(image, q), entry.manifest.preprocessing)
    _, h, w = x.shape
    top, left = (h - 224) // 2, (w - 224) // 2
    session = ort.InferenceSession(str(entry.onnx_path), providers=["CPUExecutionProvider"])
    crop = np.ascontiguousarray(x[None, :, top : top + 224, left : left + 224])
    out = session.run(["boxes"], {"image": crop})[0][0, :, 0, 0].astype(float)
    first = 4 * label if entry.manifest.localization.regression == "per-class" else 0  # type: ignore[union-attr]
    cx, cy, bw, bh = out[first : first + 4] * 224
    cx, cy = cx + left, cy + top
    box = np.array([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2])
    box *= [image.width / w, image.height / h] * 2
    return np.clip(box, 0, [image.width, image.height] * 2)


@pytest.mark.parametrize(
    ("model", "scales"),
    [("loc", "default"), ("loc-scr", [256]), ("loc,loc-scr", "default")],
    ids=["pcr", "scr", "union"],
)
def test_errors_equal_those_of_localize_answers(
    store: ModelStore, shapes: Path, model: str, scales
) -> None:
    seen: dict[Path, tuple[Localized, np.ndarray]] = {}
    row = evaluate_localization(
        store,
        model,
        shapes,
        scales=scales,
        settings=settings_for(store.root),
        progress=False,
        on_image=lambda path, result, crop: seen.__setitem__(path, (result, crop)),
    )
    params = {"model": model} | ({} if scales == "default" else {"scales": "256"})
    answers = api_answers(store, shapes, **params)
    truths = truth_boxes(shapes)
    assert row.images == len(answers) == len(CLASSES) * PER_CLASS
    top1 = top5 = central = 0
    for path, answer in answers.items():
        label = path.parent.name
        hits = [
            p["label"] == label
            and max(iou(np.array(p["box"]), np.array(t)) for t in truths[path]) >= 0.5
            for p in answer["predictions"]
        ]
        top1 += not hits[0]
        top5 += not any(hits)
        result, crop = seen[path]
        assert [p.index for p in result.predictions] == [p["index"] for p in answer["predictions"]]
        np.testing.assert_allclose(
            [p.box for p in result.predictions], [p["box"] for p in answer["predictions"]]
        )
        want = central_crop_by_hand(store, model.split(",")[0], path, CLASSES.index(label))
        np.testing.assert_allclose(crop, want, atol=1e-3)
        central += max(iou(crop, np.array(t)) for t in truths[path]) < 0.5
    n = len(answers)
    assert (row.top1_error, row.top5_error, row.central_error) == (top1 / n, top5 / n, central / n)
    first = answers[next(iter(answers))]
    assert row.scales == first["scales"] and row.model == model == first["model"]
    assert [{"model": n, "scales": qs} for n, qs in row.localizers] == first["localizers"]
    assert row.classified_by == "d" and row.central_scale == 256


def test_command_writes_the_json(
    store: ModelStore, shapes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "loc.json"
    args = ["evaluate", "--store", str(store.root), "--data", str(shapes), "--no-progress"]
    code = main([*args, "--task", "localization", "--model", "loc", "--scales", "224",
                 "--limit", "3", "--json", str(out)])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "top-5 loc err (%)" in printed and "Q=256" in printed
    (result,) = json.loads(out.read_text())["results"]
    assert {
        "model",
        "classified_by",
        "task",
        "scales",
        "flip",
        "images",
        "top1_localization_error",
        "top5_localization_error",
        "central_crop_error",
    } <= set(result)
    assert result["task"] == "localization" and result["images"] == 3
    assert result["scales"] == [224] and result["classified_by"] == "d"
    assert 0 <= result["top5_localization_error"] <= result["top1_localization_error"] <= 1


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--task", "localization", "--model", "d"], "is a classification model"),
        (["--task", "localization", "--model", "loc", "--classify-with", "loc-scr"], "a local"),
        (["--task", "localization", "--model", "loc,loc"], "listed twice"),
        (["--task", "localization", "--model", "loc,d"], "'d' is a classification model"),
        (["--task", "localization", "--model", "loc", "--method", "multicrop"], "--method"),
        (["--model", "loc"], "evaluate it with --task localization"),
        (["--model", "d", "--boxes", "x"], "--boxes is for --task localization"),
        (["--model", "d", "--draw", "x"], "--draw is for --task localization"),
    ],
)  # fmt: skip
def test_command_refusals(
    store: ModelStore,
    shapes: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    args = ["evaluate", "--store", str(store.root), "--data", str(shapes), "--no-progress"]
    assert main([*args, *extra]) == 2
    assert message in capsys.readouterr().err


def test_a_folder_without_boxes_is_refused(store: ModelStore, shapes: Path, tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    (bare / "star").mkdir(parents=True)
    (bare / "star" / "a.jpg").write_bytes(next(shapes.glob("star/*.jpg")).read_bytes())
    with pytest.raises(EvaluationError, match="annotations.json"):
        evaluate_localization(store, "loc", bare, settings=settings_for(store.root), progress=False)


def test_draw_writes_each_image_with_its_boxes(
    store: ModelStore, shapes: Path, tmp_path: Path
) -> None:
    """--draw: one picture per image, at preview size under a caption, the truth drawn in green
    and the top-1 in red where the answer puts them."""
    from PIL import Image

    from service.core import box_drawing, heatmap

    seen: dict[Path, Localized] = {}
    out = tmp_path / "drawn"
    evaluate_localization(
        store, "loc", shapes, scales=[224], limit=3, settings=settings_for(store.root),
        progress=False, draw_dir=out,
        on_image=lambda path, result, crop: seen.__setitem__(path, result),
    )  # fmt: skip
    assert len(seen) == 3
    for path, result in seen.items():
        picture = Image.open(out / path.parent.name / f"{path.stem}.png").convert("RGB")
        with Image.open(path) as original:
            size = heatmap.preview_size(original.size)
        assert picture.size == (size[0], size[1] + box_drawing.CAPTION)
        scale = size[0] / original.width
        x0, y0, x1, y1 = (c * scale for c in result.predictions[0].box)
        # the guess's outline is red, within a pixel of where the answer puts it
        pixels = np.asarray(picture)[box_drawing.CAPTION :]
        red = np.all(pixels == box_drawing.GUESS, axis=-1)
        ys, xs = np.nonzero(red)
        assert len(xs), path
        assert xs.min() >= x0 - 2 and xs.max() <= x1 + 2, (xs.min(), xs.max(), x0, x1)
        assert ys.min() >= y0 - 2 and ys.max() <= y1 + 2, (ys.min(), ys.max(), y0, y1)
    assert sorted(p.name for p in out.rglob("*.png")) == sorted(f"{p.stem}.png" for p in seen)


def test_the_box_limit_of_localize_holds_offline(store: ModelStore, shapes: Path) -> None:
    """An image over VERYDEEP_MAX_LOCALIZE_BOXES is refused as /localize refuses it, named."""
    settings = settings_for(store.root, max_localize_boxes=3)
    with pytest.raises(EvaluationError, match=r"\.jpg: scales: .* the limit .* is 3"):
        evaluate_localization(store, "loc", shapes, scales=[224], settings=settings, progress=False)
