"""Score maps drawn over their images: each cell lands on its window, scales average, and
``verydeep evaluate --maps`` writes one picture per model and image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model_store import ModelStore
from service.core import heatmap
from service.core.evaluate import EvaluationError, evaluate
from tests.service.helpers import settings_for
from verydeep.cli import main


def test_a_cell_covers_its_window_scaled_back_to_the_image() -> None:
    # A 600x448 image at Q=224 is 300x224: a 1 x 3 map (floor(300/32) - 6 = 3 columns).
    score_map = np.array([[0.0, 9.0, 0.0]])
    heat = heatmap.placed(score_map, (600, 448), 224, out_size=(600, 448))
    assert heat.shape == (448, 600)
    # Cell j covers x in [32 j, 32 j + 224) of the rescaled image, twice that on the image; a
    # pixel's heat is the mean of the cells covering it.
    assert heat[10, 300] == pytest.approx(3.0)  # covered by all three windows
    assert heat[10, 30] == pytest.approx(0.0)  # by cell 0 only
    assert heat[10, 500] == pytest.approx(4.5)  # by cells 1 and 2
    assert not np.isnan(heat).any()  # the margin right of the last window copies its column


def test_scales_average_and_colours_run_blue_to_red() -> None:
    maps = {224: np.ones((2, 1, 3)), 256: 3 * np.ones((2, 2, 4))}
    heat = heatmap.class_heat(maps, 1, (600, 448), (300, 224))
    np.testing.assert_allclose(heat, 2.0)
    rgb = heatmap.colourise(np.array([[0.0, 1.0]]))
    assert rgb[0, 0, 2] > rgb[0, 0, 0] and rgb[0, 1, 0] > rgb[0, 1, 2]


def test_evaluate_writes_the_true_and_top1_heat_of_every_image(
    service_store: ModelStore, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    for label, seed in (("class0", 1), ("class1", 2)):
        (data / label).mkdir(parents=True)
        rng = np.random.default_rng(seed)
        Image.fromarray(rng.integers(0, 255, (260, 300, 3), dtype=np.uint8)).save(
            data / label / "a.png"
        )
    labels = service_store.read("tiny-d").manifest.labels
    data.joinpath("class0").rename(data / labels[0])
    data.joinpath("class1").rename(data / labels[1])
    out = tmp_path / "maps"
    settings = settings_for(service_store.root)
    evaluate(service_store, "tiny-de", data, maps_dir=out, settings=settings, progress=False)
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert written == [f"{m}/{labels[k]}/a.png" for m in ("tiny-d", "tiny-e") for k in (0, 1)]
    picture = Image.open(out / written[0])
    assert picture.width > 2 * heatmap.PREVIEW_SIDE and picture.height > 200
    args = ["evaluate", "--store", str(service_store.root), "--model", "tiny-d", "--data"]
    assert main([*args, str(data), "--maps", str(tmp_path / "cli"), "--no-progress"]) == 0
    assert len(list((tmp_path / "cli" / "tiny-d").rglob("*.png"))) == 2
    with pytest.raises(EvaluationError, match="--maps draws dense score maps"):
        evaluate(service_store, "tiny-d", data, methods=["multicrop"], maps_dir=out)
