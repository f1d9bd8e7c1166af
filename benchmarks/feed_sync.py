"""Feed sync on the bundled sample (1,000 photos): what a first sync, a sync with nothing to do,
and a sync of changed fields cost, from local files and from a local HTTP server (which counts the
image bodies it sends, so a second sync shows it answered 304s only).

Run alone: ``python -m benchmarks.feed_sync [--size 64]``; writes ``results/feed_sync.json``.
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import logging
import tempfile
import threading
from collections import Counter
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from benchmarks.common import RESULTS, bench_model, machine_info, timed
from fashionrec_onnx import Catalog
from fashionrec_onnx.feeds.download import DownloadSettings
from fashionrec_onnx.quality.datasets import SAMPLE_DIR

log = logging.getLogger("benchmarks")


class _Counting(SimpleHTTPRequestHandler):
    """Serves the sample folder with Last-Modified (so 304s), counting 200 answers."""

    bodies: Counter[str] = Counter()

    def log_message(self, format: str, *args: object) -> None:
        pass

    def send_response(self, code: int, message: str | None = None) -> None:
        if code == 200:
            self.bodies[self.path] += 1
        super().send_response(code, message)


def write_feed(path: Path, images: list[str], colour: str = "") -> Path:
    with path.open("w", newline="") as handle:
        feed = csv.writer(handle)
        feed.writerow(["product_id", "image", "category", "colour"])
        for n, image in enumerate(images):
            feed.writerow([f"P{n // 3}", image, image.rsplit("/", 2)[-2], colour if n % 10 == 0 else ""])
    return path


def run_syncs(catalog_dir: Path, model: Path, images: list[str], work: Path) -> dict[str, float]:
    feed = write_feed(work / "feed.csv", images)
    settings = DownloadSettings(workers=8, allow_private_network=True)  # the shop is on loopback
    figures: dict[str, float] = {}
    with Catalog.create(catalog_dir, model) as catalog:
        figures["first_sync_s"] = timed(lambda: catalog.sync(feed, images_root=SAMPLE_DIR, download=settings))
        figures["nothing_to_do_s"] = timed(
            lambda: catalog.sync(feed, images_root=SAMPLE_DIR, download=settings)
        )
        feed = write_feed(work / "feed.csv", images, colour="red")  # a field of 10% of the rows
        report = None

        def changed() -> None:
            nonlocal report
            report = catalog.sync(feed, images_root=SAMPLE_DIR, download=settings)

        figures["fields_changed_s"] = timed(changed)
        figures["fields_changed_rows"] = report.updated  # type: ignore[union-attr]
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=64, help="model input size (64 or 224)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    model = bench_model(args.size)
    local = sorted(p.relative_to(SAMPLE_DIR).as_posix() for p in SAMPLE_DIR.rglob("*.png"))
    handler = functools.partial(_Counting, directory=str(SAMPLE_DIR))
    ThreadingHTTPServer.request_queue_size = 128  # 5 by default: parallel downloads would wait 1 s
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    results: dict[str, object] = {"images": len(local), "model_size": args.size, "machine": machine_info()}
    with tempfile.TemporaryDirectory() as work:
        results["local"] = run_syncs(Path(work) / "local", model, local, Path(work))
        results["http"] = run_syncs(Path(work) / "http", model, [base + name for name in local], Path(work))
    results["http"]["image_bodies_sent"] = sum(_Counting.bodies.values())  # type: ignore[index]
    server.shutdown()
    out = RESULTS / "feed_sync.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    log.info("%s\nwritten to %s", json.dumps(results, indent=2), out)


if __name__ == "__main__":
    main()
