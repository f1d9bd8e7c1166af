"""Drive the demo page in headless Chromium: upload a photo, wait for results, take a screenshot.

The browser test and the README screenshot both come from `capture`, so the picture in the README
is what the test saw. Regenerate it with ``python -m fashionrec_demo.screenshot``.
"""

from __future__ import annotations

import argparse
import logging
import socket
from pathlib import Path

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


def capture(url: str, image: Path, out: Path, *, chromium: str = CHROMIUM, timeout_ms: int = 60_000) -> int:
    """Upload ``image`` on the page at ``url``, wait for the results, save a PNG; returns how many
    result images the page shows."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            # Gradio keeps a connection open, so "network idle" never comes: wait for the upload field.
            page.goto(url, wait_until="domcontentloaded", timeout=timeout_ms)
            upload = page.locator("#query input[type=file]")
            upload.wait_for(state="attached", timeout=timeout_ms)
            upload.set_input_files(str(image))
            results = page.locator("#results img")
            results.first.wait_for(state="visible", timeout=timeout_ms)
            page.wait_for_function(
                "() => document.querySelectorAll('#results img').length >= 1 && "
                "[...document.querySelectorAll('#results img')].every(i => i.complete)",
                timeout=timeout_ms,
            )
            page.wait_for_timeout(500)  # let the gallery settle before the picture
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out), full_page=True)
            return results.count()
        finally:
            browser.close()


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
