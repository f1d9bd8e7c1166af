"""Bound what one request may upload, before the body is read (the demo and `fashionrec serve`).

Gradio checks each uploaded file against ``max_file_size`` but accepts any number of files per
request, and a multipart parser spools a whole body before a handler sees it, so a caller could
make a server store many large files with one POST. This ASGI middleware refuses (413) a guarded
request whose body is larger than the limit: from its Content-Length when it has one, and by
counting the body as it streams otherwise (chunked), before the app has stored it all.
Plain ASGI: importing it imports no web framework.

A client that sends its whole body before reading the answer (Python's urllib and requests do)
would get a connection reset instead of the 413 if the server closed with the body unread: so
the refusal's headers go first, then up to ``LINGER_BYTES`` of the body are read and thrown away
(for at most ``LINGER_SECONDS``, and ``LINGER_PAUSE`` without a byte), and only then does the
answer end and the connection close, as nginx's lingering close does. A client that asked
``Expect: 100-continue`` (curl) has sent nothing, so nothing is read.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MULTIPART_OVERHEAD = 64 * 1024  # boundaries and part headers around one file
LINGER_BYTES = 64 * 1024 * 1024  # read and thrown away after a refusal, at most
LINGER_SECONDS = 10.0  # in all
LINGER_PAUSE = 2.0  # the longest wait for the next piece (a client that sends nothing more)


class _TooLarge(Exception):
    pass


def is_upload(path: str) -> bool:
    """Gradio's upload route (under any mount prefix)."""
    return path.endswith("/upload")


class UploadGuard:
    """Refuse (413) POST requests to ``guarded`` paths whose body exceeds ``max_bytes`` in total.

    The refusal is plain text, or ``{"status": 413, "error": ..., "detail": ...}`` with
    ``as_json=True`` (for a JSON API)."""

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        *,
        guarded: Callable[[str], bool] = is_upload,
        as_json: bool = False,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.guarded = guarded
        self.as_json = as_json

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not self.guarded(scope["path"]):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        drain = receive if headers.get(b"expect", b"").lower() != b"100-continue" else None
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send, drain)
            return
        seen = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._refuse(send, receive)

    async def _refuse(self, send: Send, drain: Receive | None) -> None:
        """The 413, closing the connection; ``drain`` (the body still to come) is read and thrown
        away, within bounds, between the headers and the end of the answer."""
        message = f"upload refused: one request may send at most {self.max_bytes // 1_000_000} MB"
        if self.as_json:
            refusal = {"status": 413, "error": "upload_too_large", "detail": message}
            body, kind = json.dumps(refusal, separators=(",", ":")).encode(), b"application/json"
        else:
            body, kind = message.encode(), b"text/plain; charset=utf-8"
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", kind), (b"connection", b"close")],
            }
        )
        await send({"type": "http.response.body", "body": body, "more_body": drain is not None})
        if drain is not None:
            await _discard(drain)
            await send({"type": "http.response.body", "body": b""})


async def _discard(receive: Receive) -> None:
    """Read what the client is still sending, within LINGER_BYTES, LINGER_SECONDS, LINGER_PAUSE."""
    deadline = time.monotonic() + LINGER_SECONDS
    seen = 0
    while seen <= LINGER_BYTES:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        try:
            message = await asyncio.wait_for(receive(), min(left, LINGER_PAUSE))
        except (asyncio.TimeoutError, _TooLarge):
            return
        if message["type"] != "http.request":
            return  # the client went away
        seen += len(message.get("body", b""))
        if not message.get("more_body", False):
            return
