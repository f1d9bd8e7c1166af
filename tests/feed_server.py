"""A real HTTP server on 127.0.0.1 for feed sync tests: images with ETags, and the ways a shop's
CDN goes wrong (missing, slow, trickling, oversized, not an image, failing once, redirecting where
it should not). It counts every request."""

from __future__ import annotations

import hashlib
import io
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from PIL import Image


def png(seed: int, size: int = 48) -> bytes:
    """A distinct small photo for each seed."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


class FeedServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64  # the default 5 makes parallel downloads wait for SYN retries
    block_on_close = False

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.images: dict[str, bytes] = {}  # /img/NAME serves these, with an ETag
        self.requests: Counter[str] = Counter()  # every request, by path
        self.bodies: Counter[str] = Counter()  # 200 answers with the image's bytes
        self.delay = 0.0  # seconds before every /img/ answer (the kill -9 test's slow shop)
        self.gate = threading.Event()  # /img/ answers wait while it is clear: a sync held mid-way
        self.gate.set()
        self.slow_seconds = 2.0  # /slow.png waits this long before answering
        self.oversized = 2 * 1024 * 1024
        self.redirects: dict[str, str] = {}  # path -> Location of a 302 answer
        self.trickle_seconds = 0.05  # between two bytes of /trickle.png and /trickle-headers.png
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    server: FeedServer

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def _send(
        self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        server = self.server
        server.requests[self.path] += 1
        if self.path in server.redirects:
            self.send_response(302)
            self.send_header("Location", server.redirects[self.path])
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/trickle-headers.png":  # the status line and headers a byte at a time
            head = b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\n" + b"X-Pad: y\r\n" * 6 + b"\r\n"
            for byte in head:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(server.trickle_seconds)
            self.wfile.write(png(3))
            self.close_connection = True
        elif self.path.startswith("/img/"):
            time.sleep(server.delay)
            server.gate.wait(timeout=60)
            data = server.images.get(self.path[len("/img/") :])
            if data is None:
                self._send(404, b"not found", "text/plain")
                return
            etag = '"' + hashlib.sha256(data).hexdigest()[:16] + '"'
            if self.headers.get("If-None-Match") == etag:
                self.send_response(304)
                self.send_header("ETag", etag)
                self.end_headers()
                return
            server.bodies[self.path] += 1
            self._send(200, data, "image/png", {"ETag": etag})
        elif self.path == "/slow.png":
            time.sleep(server.slow_seconds)
            self._send(200, png(0), "image/png")
        elif self.path == "/oversized.png":
            self._send(200, png(1) + bytes(server.oversized), "image/png")
        elif self.path == "/oversized-unannounced.png":  # no Content-Length: counted while read
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(png(1) + bytes(server.oversized))
        elif self.path == "/trickle.png":  # a byte now and then: never silent, never done
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", "100")
            self.end_headers()
            for _ in range(100):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(server.trickle_seconds)
        elif self.path == "/page.png":
            self._send(200, b"<html><body>Sorry, this product is gone</body></html>", "text/html")
        elif self.path == "/flaky.png":
            if server.requests[self.path] == 1:
                self._send(503, b"busy", "text/plain")
            else:
                self._send(200, png(2), "image/png")
        else:
            self._send(404, b"not found", "text/plain")
