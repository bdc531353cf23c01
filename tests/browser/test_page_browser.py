"""The web page (docs/serving.md, "The web page") in a real browser: headless Chromium against a
real ``verydeep serve`` of the demo store. The star of ``verydeep make-shapes --seed 7`` is
uploaded, the page shows the top-1 ("star"), the timings and the score map drawn over the image;
the API's own error messages are shown as they are; multicrop gives predictions without a map;
with ``VERYDEEP_API_KEY`` set the page asks for the key and sends it.

``VERYDEEP_SCREENSHOT=docs/images/page.png`` saves the README's screenshot of the page."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import httpx
from playwright.sync_api import Page, expect

from bench.server import Server
from tests.browser.conftest import API_KEY

NOT_AN_IMAGE = b"These are notes, not an image.\n"
CLASSIFY = re.compile(r"/classify\?")

PAINTED = """() => {
  const canvas = document.getElementById("heatmap");
  if (!canvas.width || !canvas.height) return {painted: 0, total: 0, hash: 0};
  const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  let painted = 0, hash = 0;
  for (let i = 0; i < data.length; i += 4) {
    if (data[i + 3] > 0) painted++;
    hash = (hash * 31 + data[i] + 7 * data[i + 1] + 13 * data[i + 2]) % 1000000007;
  }
  return {painted, total: data.length / 4, hash};
}"""


def painted(page: Page) -> dict:
    """How many of the heatmap canvas's pixels are not transparent, of how many, and a hash."""
    return page.evaluate(PAINTED)


def load(page: Page, server: Server) -> None:
    page.goto(f"{server.url}/")
    expect(page.locator("#model option")).not_to_have_count(0)
    expect(page.locator("#status")).to_have_text("Choose, drop or paste an image.")


DISPATCH = """([encoded, how]) => {
  const bytes = Uint8Array.from(atob(encoded), (c) => c.charCodeAt(0));
  const transfer = new DataTransfer();
  transfer.items.add(new File([bytes], "star.jpg", {type: "image/jpeg"}));
  if (how === "paste") {
    document.dispatchEvent(new ClipboardEvent("paste", {clipboardData: transfer, bubbles: true}));
    return;
  }
  const zone = document.getElementById("drop");
  zone.dispatchEvent(new DragEvent("dragenter", {dataTransfer: transfer, bubbles: true}));
  zone.dispatchEvent(new DragEvent("drop", {dataTransfer: transfer, bubbles: true}));
}"""


def dispatch_file(page: Page, path: Path, how: str) -> None:
    """The events of a file dropped on the drop zone (``drop``) or pasted (``paste``)."""
    page.evaluate(DISPATCH, [base64.b64encode(path.read_bytes()).decode(), how])


def api_error(server: Server, data: bytes, name: str, **params: str) -> dict:
    """The API's own answer to the upload the page is about to send."""
    response = httpx.post(
        f"{server.url}/classify", params=params, files={"image": (name, data, "image/png")}
    )
    assert response.status_code >= 400, response.text
    return response.json()["error"]


def test_star_top1_timings_and_its_score_map_over_the_image(
    page: Page, server: Server, star: Path, screenshot_path: Path | None
) -> None:
    load(page, server)
    expect(page.locator("#model")).to_have_value("demo-de")
    expect(page.locator("#scales")).to_have_attribute("placeholder", "224,272,320")
    page.set_input_files("#file", str(star))  # classifies at once

    names = page.locator("#prediction-list .name")
    expect(names).to_have_count(5)
    expect(names.first).to_have_text("star")
    expect(page.locator("#prediction-list input").first).to_be_checked()
    expect(page.locator("#summary")).to_contain_text("demo-de (demo-d, demo-e)")
    expect(page.locator("#summary")).to_contain_text("total")
    expect(page.locator("#summary")).to_contain_text("460 x 356")
    expect(page.locator("#error")).to_be_hidden()

    # The map: over the displayed image, the same size, painted all over.
    expect(page.locator("#map-controls")).to_be_visible()
    expect(page.locator("#map-scale")).to_have_value("average")
    picture, canvas = (
        page.locator("#preview").bounding_box(),
        page.locator("#heatmap").bounding_box(),
    )
    assert picture and canvas and picture["width"] > 100
    for side in ("x", "y", "width", "height"):
        assert abs(picture[side] - canvas[side]) < 1, (picture, canvas)
    average = painted(page)
    assert average["painted"] > 0.99 * average["total"], average
    expect(page.locator("#legend-caption")).to_contain_text('Raw score of "star"')
    expect(page.locator("#legend-caption")).to_contain_text("mean over scales 224, 272, 320")
    low, high = (float(page.locator(f"#legend-{end}").inner_text()) for end in ("min", "max"))
    assert low < high

    if screenshot_path is not None:
        screenshot_path.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(screenshot_path), full_page=True)
        print(f"screenshot of the page: {screenshot_path}")

    # One scale: its own map (4 x 6 cells at Q = 320), another picture than the average.
    assert page.locator("#map-scale option").all_inner_texts() == [
        "average over scales (224, 272, 320)",
        "Q = 224 (1 x 3 cells)",
        "Q = 272 (2 x 4 cells)",
        "Q = 320 (4 x 6 cells)",
    ]
    page.select_option("#map-scale", "320")
    expect(page.locator("#legend-caption")).to_contain_text("at Q = 320")
    one_scale = painted(page)
    assert one_scale["painted"] > 0.99 * one_scale["total"], one_scale
    assert one_scale["hash"] != average["hash"]

    # Another class of the top 5, by keyboard: its map replaces the star's.
    page.locator("#prediction-list input").first.focus()
    page.keyboard.press("ArrowDown")
    second = names.nth(1).inner_text()
    expect(page.locator("#prediction-list input").nth(1)).to_be_checked()
    expect(page.locator("#legend-caption")).to_contain_text(f'Raw score of "{second}"')
    assert painted(page)["hash"] != one_scale["hash"]


def test_the_apis_error_messages_are_shown_as_they_are(
    page: Page, server: Server, star: Path
) -> None:
    load(page, server)
    # Not an image, though it is named one: 400 undecodable_image.
    error = api_error(server, NOT_AN_IMAGE, "notes.png", model="demo-de", maps="top")
    assert error["code"] == "undecodable_image"
    page.set_input_files(
        "#file", files=[{"name": "notes.png", "mimeType": "image/png", "buffer": NOT_AN_IMAGE}]
    )
    expect(page.locator("#error-message")).to_have_text(error["message"])
    expect(page.locator("#error-code")).to_have_text("400 undecodable_image:")
    expect(page.locator("#answer")).to_be_hidden()
    expect(page.locator("#no-preview")).to_be_visible()

    # A scale the API refuses: 422 invalid_parameter, with its message.
    page.set_input_files("#file", str(star))
    expect(page.locator("#prediction-list .name").first).to_have_text("star")
    error = api_error(server, star.read_bytes(), "star.jpg", scales="100", maps="top")
    assert error["code"] == "invalid_parameter"
    page.fill("#scales", "100")
    page.click("#run")
    expect(page.locator("#error-message")).to_have_text(error["message"])
    expect(page.locator("#error-code")).to_have_text("422 invalid_parameter:")
    expect(page.locator("#answer")).to_be_hidden()
    assert painted(page)["painted"] == 0


def test_a_failure_of_the_service_shows_its_request_id(
    page: Page, server: Server, star: Path
) -> None:
    """A 5xx shows the X-Request-ID the service logged it under (the service's own 500 is the
    one answer no upload provokes, so the browser is given one); a 4xx shows none."""
    load(page, server)
    failed = '{"error": {"code": "internal_error", "message": "internal server error"}}'
    page.route(
        CLASSIFY,
        lambda route: route.fulfill(
            status=500,
            body=failed,
            headers={"content-type": "application/json", "x-request-id": "5f1d0c9a"},
        ),
    )
    page.set_input_files("#file", str(star))
    expect(page.locator("#error-code")).to_have_text("500 internal_error:")
    expect(page.locator("#error-message")).to_have_text("internal server error")
    expect(page.locator("#error-request")).to_have_text("(request 5f1d0c9a)")
    page.unroute(CLASSIFY)
    page.fill("#scales", "100")
    page.click("#run")
    expect(page.locator("#error-code")).to_have_text("422 invalid_parameter:")
    expect(page.locator("#error-request")).to_be_hidden()


def test_a_pasted_image_with_multicrop_gets_predictions_without_a_map(
    page: Page, server: Server, star: Path
) -> None:
    load(page, server)
    page.select_option("#model", "demo-d")
    page.fill("#scales", "224")
    page.select_option("#method", "multicrop")
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url) if "classify" in r.url else None)
    dispatch_file(page, star, "paste")
    expect(page.locator("#prediction-list .name")).to_have_count(5)
    expect(page.locator("#summary")).to_contain_text("multicrop, with flip")
    expect(page.locator("#no-map")).to_have_text(
        "Multi-crop has no dense score map: predictions only."
    )
    expect(page.locator("#map-controls")).to_be_hidden()
    assert painted(page)["painted"] == 0
    (url,) = requests
    assert "method=multicrop" in url and "maps=" not in url


def test_a_dropped_image_on_a_phone_screen(phone: Page, server: Server, star: Path) -> None:
    load(phone, server)
    # Nothing wider than the screen: one column.
    assert phone.evaluate("document.documentElement.scrollWidth") <= 390
    dispatch_file(phone, star, "drop")
    expect(phone.locator("#prediction-list .name").first).to_have_text("star")
    picture = phone.locator("#preview").bounding_box()
    assert picture and picture["width"] <= 390
    assert painted(phone)["painted"] > 0
    assert phone.evaluate("document.documentElement.scrollWidth") <= 390


def test_with_an_api_key_the_page_asks_for_it_and_sends_it(
    page: Page, keyed_server: Server, star: Path
) -> None:
    sent: list[str | None] = []
    page.on(
        "request",
        lambda r: sent.append(r.headers.get("authorization")) if "classify" in r.url else None,
    )
    page.goto(f"{keyed_server.url}/")  # the page and its assets need no key
    expect(page.locator("#key-form")).to_be_visible()
    expect(page.locator("#key")).to_be_focused()
    expect(page.locator("#error-code")).to_have_text("401 unauthorized:")
    expect(page.locator("#error-message")).to_contain_text("missing or wrong API key")

    page.fill("#key", "wrong")
    page.press("#key", "Enter")
    expect(page.locator("#key-note")).to_have_text(
        "The service refused this key: enter the right one."
    )
    page.fill("#key", API_KEY)
    page.press("#key", "Enter")
    expect(page.locator("#model option")).not_to_have_count(0)
    expect(page.locator("#error")).to_be_hidden()
    page.set_input_files("#file", str(star))
    expect(page.locator("#prediction-list .name").first).to_have_text("star")
    assert sent == [f"Bearer {API_KEY}"]
    assert page.evaluate("sessionStorage.getItem('verydeep.apiKey')") == API_KEY
    assert page.evaluate("localStorage.length") == 0
    assert painted(page)["painted"] > 0
