"""The browser tests' fixtures: Debian's chromium (``/usr/bin/chromium``, installed by ``make
browser``) driven by Playwright's Python package, a real ``verydeep serve`` of the committed demo
store, and a screenshot of the page in the test's ``tmp_path`` when a test fails."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.server import Server
from tests.service.helpers import ROOT, server_for
from training.shapes import CLASSES, JPEG_QUALITY, shape_image

try:
    from playwright.sync_api import Browser, Page, sync_playwright
except ImportError:  # the dev extra is not installed
    sync_playwright = None

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DEMO_STORE = ROOT / "model_store"
API_KEY = "browser-test-key"
SCREENSHOT_VARIABLE = "VERYDEEP_SCREENSHOT"
"""Where the page's screenshot for the README goes, when set (docs/serving.md, "The web page")."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    reason = None
    if sync_playwright is None:
        reason = "the playwright package is missing: pip install -e '.[dev]' (make install)"
    elif not CHROMIUM.exists():
        reason = f"no {CHROMIUM}: run `make browser` (as root: apt-get install -y chromium)"
    if reason:
        for item in items:
            if here in Path(str(item.fspath)).parents:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator:
    report = yield
    if report.when == "call":
        item.stash[FAILED] = report.failed
    return report


FAILED = pytest.StashKey[bool]()


@pytest.fixture(scope="session")
def star(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``star/star_00000.jpg`` of ``verydeep make-shapes DIR --per-class 1 --seed 7``."""
    path = tmp_path_factory.mktemp("shapes") / "star_00000.jpg"
    shape_image(7, CLASSES.index("star"), 0).save(path, quality=JPEG_QUALITY)
    return path


def demo_server(tmp_path_factory: pytest.TempPathFactory, **overrides: object) -> Server:
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    return server_for(DEMO_STORE, log, DEFAULT_MODEL="demo-de", **overrides)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``verydeep serve`` of the demo store (demo-d, demo-e, the ensemble demo-de)."""
    with demo_server(tmp_path_factory) as s:
        yield s


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The same with ``VERYDEEP_API_KEY`` set."""
    with demo_server(tmp_path_factory, API_KEY=API_KEY) as s:
        yield s


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    # Module scope: Playwright's sync API runs an event loop in the main thread while it is open,
    # and asyncio.run() in later test modules (the gate's tests) refuses to start inside one.
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        yield chromium
        chromium.close()


class Console:
    """What the page said on its console and what it threw: a test ends with neither a script
    error nor a Content-Security-Policy refusal."""

    def __init__(self, page: Page) -> None:
        self.errors: list[str] = []
        page.on("pageerror", lambda err: self.errors.append(f"uncaught: {err}"))
        page.on("console", self._console)

    def _console(self, message) -> None:
        # The browser logs each non-2xx answer of a fetch; the page shows those itself.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            self.errors.append(message.text)


def open_page(
    browser: Browser, request: pytest.FixtureRequest, tmp_path: Path, **context: object
) -> Iterator[Page]:
    """A fresh browser context and page; on failure a screenshot of it in ``tmp_path``."""
    ctx = browser.new_context(**{"viewport": {"width": 1200, "height": 900}, **context})
    ctx.set_default_timeout(30_000)
    page = ctx.new_page()
    console = Console(page)
    yield page
    if request.node.stash.get(FAILED, False):
        shot = tmp_path / "failure.png"
        page.screenshot(path=str(shot), full_page=True)
        print(f"screenshot of the page at the failure: {shot}")
    ctx.close()
    assert not console.errors, console.errors


@pytest.fixture
def page(browser: Browser, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Page]:
    yield from open_page(browser, request, tmp_path)


@pytest.fixture
def phone(browser: Browser, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Page]:
    """A phone's screen: 390 x 844 CSS pixels at 3 device pixels each, touch."""
    yield from open_page(
        browser,
        request,
        tmp_path,
        viewport={"width": 390, "height": 844},
        device_scale_factor=3,
        is_mobile=True,
        has_touch=True,
    )


@pytest.fixture
def screenshot_path() -> Path | None:
    value = os.environ.get(SCREENSHOT_VARIABLE)
    return Path(value) if value else None
