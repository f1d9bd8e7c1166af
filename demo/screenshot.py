"""Drive the demo page in headless Chromium: upload a photo, wait for results, take a screenshot.

The browser test and the README screenshots both come from `capture`, so the pictures in the
README are what the test saw. Regenerate them, at desktop and phone widths, from one run of the
demo with ``python -m fashionrec_demo.screenshot`` (``--model`` to skip the demo's own export).
"""

from __future__ import annotations

import argparse
import json
import logging
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from playwright.sync_api import Page, ViewportSize

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

DESKTOP: ViewportSize = {"width": 1280, "height": 900}
PHONE: ViewportSize = {"width": 420, "height": 900}
WIDTHS = {"desktop": DESKTOP, "phone": PHONE}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def open_page(
    url: str, *, chromium: str = CHROMIUM, timeout_ms: int = 60_000, viewport: ViewportSize = DESKTOP
) -> Iterator[Page]:
    """The demo page at ``url`` in headless Chromium (the system's, no browser download)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=viewport)
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


def captions(page: Page) -> list[str]:
    return page.locator("#results .caption-label").all_inner_texts()


def capture(
    url: str,
    image: Path,
    out: Path,
    *,
    chromium: str = CHROMIUM,
    timeout_ms: int = 60_000,
    viewport: ViewportSize = DESKTOP,
) -> list[str]:
    """Upload ``image`` on the page at ``url`` in a window of ``viewport``, wait for the results,
    save a PNG of the whole page; returns the captions of the results shown."""
    with open_page(url, chromium=chromium, timeout_ms=timeout_ms, viewport=viewport) as page:
        upload(page, image)
        page.wait_for_timeout(500)  # let the gallery settle before the picture
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out), full_page=True)
        return captions(page)


def main() -> None:
    from fashionrec_demo.app import build_app, default_catalog, launch

    from fashionrec_onnx.quality.datasets import sample_dir

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs"), help="folder for demo-<width>.png")
    parser.add_argument("--query", type=Path, default=sample_dir() / "dress" / "test-00013.png")
    parser.add_argument("--model", type=Path, help="serve this model (default: the demo's own)")
    parser.add_argument("--home", type=Path, help="the demo's home (default: a temporary folder)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    with tempfile.TemporaryDirectory() as scratch:
        catalog, banner = default_catalog(args.home or Path(scratch), args.model)
        port = free_port()
        app = launch(build_app(catalog, banner), port=port, block=False)
        try:
            run: dict[str, object] = {"model": catalog.info.weights, "fingerprint": catalog.info.fingerprint}
            for name, viewport in WIDTHS.items():
                out = args.out / f"demo-{name}.png"
                run[name] = capture(f"http://127.0.0.1:{port}/", args.query, out, viewport=viewport)
                log.info("wrote %s", out)
            record = json.dumps(run, indent=1, ensure_ascii=False)
            (args.out / "demo-screenshots.json").write_text(record + "\n", encoding="utf-8")
        finally:
            app.close()
            catalog.close()


if __name__ == "__main__":
    main()
