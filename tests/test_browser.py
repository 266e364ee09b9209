"""The drawing page in Debian's Chromium, driven by Playwright: digits drawn with pointer moves on
the canvas are read live; Clear and Undo; a row of digits reads as a number.

`python tests/test_browser.py [docs/serve.png]` saves the README's screenshot of the page.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from digitrec.serve import RunningServer, create_app, serve_in_thread

CHROMIUM = Path("/usr/bin/chromium")  # Debian's package; never `playwright install`
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu"]
VIEWPORT = {"width": 1000, "height": 650}
SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "serve.png"

Stroke = list[tuple[float, float]]


def arc(cx: float, cy: float, rx: float, ry: float, start: float, end: float, steps: int = 16):
    """Points along an ellipse from angle ``start`` to ``end`` (degrees, y pointing down)."""
    return [
        (
            cx + rx * math.cos(math.radians(start + (end - start) * i / steps)),
            cy + ry * math.sin(math.radians(start + (end - start) * i / steps)),
        )
        for i in range(steps + 1)
    ]


# Each digit as pen strokes in a unit square (x right, y down), drawn the way a person would.
DIGITS: dict[str, list[Stroke]] = {
    "1": [[(0.5, 0.15), (0.5, 0.85)]],
    "2": [arc(0.48, 0.33, 0.2, 0.17, 200, 380)[:-1] + [(0.26, 0.85), (0.74, 0.85)]],
    "3": [arc(0.48, 0.32, 0.2, 0.16, 200, 450)[:-1] + arc(0.48, 0.66, 0.22, 0.18, -90, 160)],
    "4": [[(0.6, 0.15), (0.26, 0.6), (0.74, 0.6)], [(0.6, 0.35), (0.6, 0.87)]],
    "7": [[(0.24, 0.2), (0.72, 0.2), (0.4, 0.85)]],
}


def draw(page, number: str) -> None:
    """Draw the digits of ``number`` side by side across the canvas with mouse pointer moves.

    Each digit gets a square cell as tall as the canvas, narrower when the row would not fit.
    """
    box = page.locator("#canvas").bounding_box()
    side = min(box["height"], box["width"] / len(number))
    left = box["x"] + (box["width"] - side * len(number)) / 2
    top = box["y"] + (box["height"] - side) / 2
    for index, digit in enumerate(number):
        for stroke in DIGITS[digit]:
            points = [(left + (index + x) * side, top + y * side) for x, y in stroke]
            page.mouse.move(*points[0])
            page.mouse.down()
            for point in points[1:]:
                page.mouse.move(*point, steps=4)  # several pointermove events per segment
            page.mouse.up()


def answer(page) -> str:
    """The page's answer once the drawing as it is now has been read (the request is debounced;
    answers to earlier versions of the drawing are never shown)."""
    page.wait_for_function("() => document.querySelector('#answer').dataset.state === 'done'")
    return page.text_content("#answer")


def launch(playwright):
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)


def open_page(browser, base_url: str, problems: list[str], viewport: dict = VIEWPORT):
    """The drawing page, once its script has run; script errors and failed loads go to
    ``problems``."""
    page = browser.new_page(viewport=viewport)
    page.set_default_timeout(15_000)

    def on_console(message) -> None:
        if message.type == "error":
            problems.append(f"console: {message.text}")

    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("console", on_console)
    page.goto(base_url + "/")
    # The footer is filled from /api/model by the page's script.
    page.wait_for_function(
        "() => document.querySelector('#model').textContent.includes('parameters')"
    )
    return page


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    with serve_in_thread(create_app()) as running:
        yield running


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: apt-get install chromium (.ci/run installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = launch(playwright)
        yield chromium
        chromium.close()


@pytest.mark.parametrize(
    ("path", "rendered"), [("/docs", ".swagger-ui .info .title"), ("/redoc", "h1")]
)
def test_the_api_docs_render_with_no_request_leaving_the_server(browser, server, path, rendered):
    page = browser.new_page(viewport=VIEWPORT)
    page.set_default_timeout(15_000)
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(server.base_url + path)
    assert "digitrec" in page.text_content(rendered)
    # The page's own blobs are local too; nothing may go to another host.
    local = [url.removeprefix("blob:") for url in requested]
    assert local and all(url.startswith(server.base_url) for url in local), requested
    page.close()


@pytest.fixture
def page(browser, server):
    problems: list[str] = []
    page = open_page(browser, server.base_url, problems)
    yield page
    page.close()
    assert problems == []  # no script errors, no failed requests


def test_the_empty_page_says_no_digit_found(page):
    assert answer(page) == "no digit found"
    assert page.is_disabled("#clear") and page.is_disabled("#undo")
    assert "fastcnn" in page.text_content("#model")


@pytest.mark.parametrize("digit", ["1", "7"])
def test_a_drawn_digit_is_read(page, digit):
    draw(page, digit)
    assert answer(page) == digit, page.text_content("#sentence")
    assert page.text_content("#sentence").startswith(f"The number is probably a {digit} (")
    # One card: the 28x28 image the model saw and a probability bar per class.
    assert page.locator("#digits .digit").count() == 1
    assert page.get_attribute("#digits img", "src").startswith("data:image/png;base64,")
    assert page.locator("#digits .track").count() == 10


def test_clear_then_no_digit_found(page):
    draw(page, "7")
    assert answer(page) == "7"
    page.click("#clear")
    assert answer(page) == "no digit found"
    assert page.locator("#digits .digit").count() == 0
    assert page.is_disabled("#clear")


def test_two_digits_side_by_side_read_as_a_number_and_undo(page):
    draw(page, "71")
    assert answer(page) == "71", page.text_content("#sentence")
    assert page.locator("#digits .digit").count() == 2
    page.click("#undo")  # the 1 was the last stroke
    assert answer(page) == "7"


def save_screenshot(path: Path = SCREENSHOT, number: str = "42") -> Path:
    """The page after drawing ``number``, as a PNG of the viewport (1000x680: the footer too)."""
    from playwright.sync_api import sync_playwright

    with serve_in_thread(create_app()) as running, sync_playwright() as playwright:
        chromium = launch(playwright)
        problems: list[str] = []
        page = open_page(chromium, running.base_url, problems, {"width": 1000, "height": 680})
        draw(page, number)
        read = answer(page)
        if read != number or problems:
            raise RuntimeError(f"the page read {read!r}, not {number!r}; {problems}")
        path.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(path))
        chromium.close()
    return path


if __name__ == "__main__":
    print(save_screenshot(Path(sys.argv[1]) if len(sys.argv) > 1 else SCREENSHOT))
