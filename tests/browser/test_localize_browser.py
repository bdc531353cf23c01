"""The web page's Localize (docs/serving.md, "Localizing") in a real browser: headless Chromium
against a real ``verydeep serve`` of the demo models and two random-weight localization entries.
The localization models are offered for Localize only (never as classifiers), each alone and both
together; the boxes are listed as ``/localize`` answers them and drawn over the image, each at its
place."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect

from bench.server import Server
from model_store import Localization, ModelStore, TrainScale
from tests.browser.conftest import DEMO_STORE
from tests.service.helpers import box_vgg, server_for
from training.export import export_to_store

BOX_COLOURS = [(0xE6, 0x9F, 0x00), (0x56, 0xB4, 0xE9)]
"""The first two of page.js's BOX_COLOURS."""

PIXEL = """([x, y]) => {
  const canvas = document.getElementById("boxes");
  return Array.from(canvas.getContext("2d").getImageData(x, y, 1, 1).data);
}"""

PAINTED = """() => {
  const canvas = document.getElementById("boxes");
  if (!canvas.width || !canvas.height) return 0;
  const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  let painted = 0;
  for (let i = 3; i < data.length; i += 4) if (data[i] > 0) painted++;
  return painted;
}"""


@pytest.fixture(scope="module")
def loc_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("locstore") / "store"
    for name in ("demo-d", "demo-e"):
        shutil.copytree(DEMO_STORE / name, root / name)
    store = ModelStore(root)
    demo = store.read("demo-d").manifest
    for name, regression, seed in (("demo-loc", "per-class", 5), ("demo-loc-scr", "single", 6)):
        loc = Localization(regression=regression, classifier="demo-d")  # type: ignore[arg-type]
        export_to_store(
            box_vgg(seed, loc.box_channels(demo.num_classes)),
            store,
            name,
            labels=demo.labels,
            preprocessing=demo.preprocessing,
            train_scale=TrainScale(min=256, max=256),
            source="test",
            localization=loc,
        )
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with server_for(root, log, DEFAULT_MODEL="demo-d") as s:
        yield s


def test_localize_lists_and_draws_the_boxes_of_the_answer(
    page: Page, loc_server: Server, star: Path, tmp_path: Path
) -> None:
    page.goto(f"{loc_server.url}/")
    expect(page.locator("#model option")).not_to_have_count(0)
    # The localization model is no classifier: only Localize offers it.
    assert "demo-loc" not in page.locator("#model option").evaluate_all(
        "options => options.map(o => o.value)"
    )
    expect(page.locator("#localize-controls")).to_be_visible()
    expect(page.locator("#loc-model")).to_have_value("demo-loc")
    expect(page.locator("#localize")).to_be_disabled()

    page.set_input_files("#file", str(star))  # classifies at once, with demo-d
    expect(page.locator("#prediction-list .name")).to_have_count(5)
    expect(page.locator("#localize")).to_be_enabled()
    page.click("#localize")
    items = page.locator("#box-list li")
    expect(items).to_have_count(5)
    expect(page.locator("#error")).to_be_hidden()

    answer = httpx.post(
        f"{loc_server.url}/localize",
        params={"model": "demo-loc"},
        files={"image": ("star.jpg", star.read_bytes(), "image/jpeg")},
        timeout=60,
    ).json()
    labels = [p["label"] for p in answer["predictions"]]
    assert page.locator("#box-list .name").all_inner_texts() == labels
    top = answer["predictions"][0]
    expect(items.first).to_contain_text(f"box score {top['box_score']:.2f}")
    expect(page.locator("#loc-summary")).to_contain_text("demo-d")
    expect(page.locator("#loc-summary")).to_contain_text("224, 256, 288, with flip")
    expect(page.locator("#status")).to_contain_text(f"{top['label']}: box score")

    # Over the displayed image, the same size; the top box's bottom edge in the top box's colour.
    picture, canvas = page.locator("#preview").bounding_box(), page.locator("#boxes").bounding_box()
    assert picture and canvas and picture["width"] > 100
    for side in ("x", "y", "width", "height"):
        assert abs(picture[side] - canvas[side]) < 1, (picture, canvas)
    assert page.evaluate(PAINTED) > 0
    width, height = page.evaluate(
        "() => [document.getElementById('boxes').width, document.getElementById('boxes').height]"
    )
    x0, _, x1, y1 = top["box"]
    sx, sy = width / answer["image"]["width"], height / answer["image"]["height"]
    x, y = int((x0 + x1) / 2 * sx), min(int(y1 * sy), height - 1)
    pixel = page.evaluate(PIXEL, [x, y])
    assert pixel[3] > 0 and all(
        abs(a - b) < 40 for a, b in zip(pixel[:3], BOX_COLOURS[0], strict=True)
    ), pixel

    # A new image clears the boxes until it is localized.
    other = tmp_path / "another.jpg"
    shutil.copy(star, other)
    page.set_input_files("#file", str(other))
    expect(page.locator("#loc-answer")).to_be_hidden()
    assert page.evaluate(PAINTED) == 0


def test_two_localization_models_are_offered_together(
    page: Page, loc_server: Server, star: Path
) -> None:
    """Both entries name demo-d: the page offers them merged, ``model=demo-loc,demo-loc-scr``,
    and lists the union's boxes as ``/localize`` answers them."""
    page.goto(f"{loc_server.url}/")
    values = page.locator("#loc-model option").evaluate_all("options => options.map(o => o.value)")
    assert values == ["demo-loc", "demo-loc-scr", "demo-loc,demo-loc-scr"]
    page.select_option("#loc-model", "demo-loc,demo-loc-scr")
    page.set_input_files("#file", str(star))
    expect(page.locator("#localize")).to_be_enabled()
    page.click("#localize")
    expect(page.locator("#box-list li")).to_have_count(5)
    answer = httpx.post(
        f"{loc_server.url}/localize",
        params={"model": "demo-loc,demo-loc-scr"},
        files={"image": ("star.jpg", star.read_bytes(), "image/jpeg")},
        timeout=60,
    ).json()
    assert [n["model"] for n in answer["localizers"]] == ["demo-loc", "demo-loc-scr"]
    labels = [p["label"] for p in answer["predictions"]]
    assert page.locator("#box-list .name").all_inner_texts() == labels
    expect(page.locator("#loc-summary")).to_contain_text(
        "demo-loc (Q 224, 256, 288) + demo-loc-scr (Q 224, 256, 288)"
    )
    expect(page.locator("#loc-summary")).to_contain_text(f"{answer['boxes_per_class']} per class")
