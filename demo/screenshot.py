"""Drive the demo page in headless Chromium: upload a photo, wait for results, take a screenshot.

The browser test and the README screenshot both come from `capture`, so the picture in the README
is what the test saw. Regenerate it with ``python -m fashionrec_demo.screenshot``.
"""

from __future__ import annotations

import argparse
import logging
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from playwright.sync_api import Page

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]

log = logging.getLogger("fashionrec.demo")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def open_page(url: str, *, chromium: str = CHROMIUM, timeout_ms: int = 60_000) -> Iterator[Page]:
    """The demo page at ``url`` in headless Chromium (the system's, no browser download)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(timeout_ms)
            # Gradio keeps a connection open, so "network idle" never comes: wait for the upload field.
            page.goto(url, wait_until="domcontentloaded")
            page.locator("#query input[type=file]").wait_for(state="attached")
            yield page
        finally:
            browser.close()


def wait_for_results(page: Page) -> int:
    """Wait until the results gallery shows loaded images; returns how many."""
    page.locator("#results img").first.wait_for(state="visible")
    page.wait_for_function(
        "() => document.querySelectorAll('#results img').length >= 1 && "
        "[...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth > 0)"
    )
    return page.locator("#results img").count()


def upload(page: Page, image: Path) -> int:
    """Upload a photo as a shopper would; returns how many results the page then shows."""
    page.locator("#query input[type=file]").set_input_files(str(image))
    return wait_for_results(page)


def capture(url: str, image: Path, out: Path, *, chromium: str = CHROMIUM, timeout_ms: int = 60_000) -> int:
    """Upload ``image`` on the page at ``url``, wait for the results, save a PNG; returns how many
    result images the page shows."""
    with open_page(url, chromium=chromium, timeout_ms=timeout_ms) as page:
        shown = upload(page, image)
        page.wait_for_timeout(500)  # let the gallery settle before the picture
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out), full_page=True)
        return shown


def main() -> None:
    from fashionrec_demo.app import build_app, default_catalog, launch

    from fashionrec_onnx.datasets import sample_dir

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/screenshot.png"))
    parser.add_argument("--query", type=Path, default=sample_dir() / "dress" / "test-00013.png")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    catalog, banner = default_catalog()
    port = free_port()
    app = launch(build_app(catalog, banner), port=port, block=False)
    try:
        shown = capture(f"http://127.0.0.1:{port}/", args.query, args.out)
        log.info("wrote %s (%d results shown)", args.out, shown)
    finally:
        app.close()
        catalog.close()


if __name__ == "__main__":
    main()
