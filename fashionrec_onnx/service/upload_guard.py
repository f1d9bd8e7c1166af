"""Bound what one request may upload, before the body is read (the demo and `fashionrec serve`).

Gradio checks each uploaded file against ``max_file_size`` but accepts any number of files per
request, and a multipart parser spools a whole body before a handler sees it, so a caller could
make a server store many large files with one POST. This ASGI middleware refuses (413) a guarded
request whose body is larger than the limit: from its Content-Length when it has one, and by
counting the body as it streams otherwise (chunked), before the app has stored it all.
Plain ASGI: importing it imports no web framework.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MULTIPART_OVERHEAD = 64 * 1024  # boundaries and part headers around one file


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
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
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
                await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
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
        await send({"type": "http.response.body", "body": body})
