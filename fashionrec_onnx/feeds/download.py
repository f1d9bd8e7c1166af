"""Fetching feed images over HTTP(S) into a content-addressed cache, never trusting the server.

Each image is stored once under the digest of its bytes (``<sha256>.<ext>``, written atomically),
so a changed image gets a new file name and an unchanged one keeps its name across syncs. Per URL
a small JSON record keeps the ``ETag`` and ``Last-Modified`` the server sent; the next fetch asks
with ``If-None-Match`` / ``If-Modified-Since`` and a 304 answer costs no transfer at all.

What a server can do wrong is bounded: ``timeout`` is how long it may stay silent (connecting, or
between two reads), ``deadline`` how long one image may take in all, ``max_bytes`` is enforced on
the Content-Length and again while streaming. 5xx, 408, 429, timeouts and dropped connections are
retried with exponential backoff; other 4xx answers (404...) are not. Only the standard library
(urllib: redirects, proxies from the environment, HTTPS) is used.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import io
import json
import logging
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from ..errors import DownloadError

log = logging.getLogger(__name__)

USER_AGENT = "fashionrec-onnx feed sync"
RETRIED_STATUS = frozenset({408, 429, 500, 502, 503, 504})
CHUNK = 64 * 1024
RECORDS = "urls"  # subfolder of the cache holding one validator record per URL
# Pillow's format names to file suffixes (the rest: the format name in lower case).
SUFFIXES = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tif"}


def is_url(reference: str) -> bool:
    """Whether a feed's image reference is something to download rather than a file."""
    return reference.lower().startswith(("http://", "https://"))


@dataclass(frozen=True)
class DownloadSettings:
    """Limits of one image download; the defaults suit a shop's CDN."""

    timeout: float = 10.0  # seconds the server may stay silent (connect, or between reads)
    deadline: float = 60.0  # seconds for one attempt at one image, all reads included
    max_bytes: int = 32 * 1024 * 1024
    retries: int = 2  # attempts after the first, for 5xx, 408, 429, timeouts, dropped connections
    backoff: float = 0.5  # seconds before the first retry, doubled for each next one
    workers: int = 8  # downloads in flight at once


@dataclass(frozen=True)
class Fetched:
    """An image in the cache: its file, the digest of its bytes, and whether it was transferred
    this time (False: the server answered 304 Not Modified)."""

    url: str
    path: Path
    sha256: str
    size: int
    transferred: bool


class _Retry(Exception):
    """A failure worth another attempt (server error, timeout, dropped connection)."""


class ImageCache:
    """The cache folder (e.g. ``<catalog>/feed-images``) and the downloads that fill it."""

    def __init__(self, folder: str | os.PathLike[str], settings: DownloadSettings | None = None) -> None:
        self.folder = Path(folder)
        self.settings = settings or DownloadSettings()
        self._opener = urllib.request.build_opener()  # proxies and redirects as urllib does them
        self._made = False
        self._made_lock = threading.Lock()

    # -- one URL --------------------------------------------------------------------------------

    def fetch(self, url: str) -> Fetched:
        """The cached image for ``url``, asking the server whether it changed; `DownloadError`
        says why it could not be had."""
        settings = self.settings
        attempt = 0
        while True:
            try:
                return self._attempt(url)
            except _Retry as exc:
                if attempt >= settings.retries:
                    tries = f" (after {attempt + 1} attempts)" if attempt else ""
                    raise DownloadError(url, f"{exc}{tries}") from None
                pause = settings.backoff * 2**attempt
                log.debug("%s: %s; retrying in %.2fs", url, exc, pause)
                time.sleep(pause)
                attempt += 1

    def _attempt(self, url: str) -> Fetched:
        record = self._record(url)
        headers = {"User-Agent": USER_AGENT, "Accept": "image/*"}
        if record:
            if record.get("etag"):
                headers["If-None-Match"] = record["etag"]
            if record.get("last_modified"):
                headers["If-Modified-Since"] = record["last_modified"]
        try:
            request = urllib.request.Request(_quoted(url), headers=headers)
            with self._opener.open(request, timeout=self.settings.timeout) as response:
                data = self._read(url, response)
                validators = {
                    "etag": response.headers.get("ETag"),
                    "last_modified": _http_date(response.headers.get("Last-Modified")),
                }
                content_type = response.headers.get("Content-Type") or "no Content-Type"
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code == 304 and record:
                return Fetched(url, self.folder / record["file"], record["sha256"], record["size"], False)
            if exc.code in RETRIED_STATUS:
                raise _Retry(f"HTTP {exc.code} {exc.reason}") from None
            raise DownloadError(url, f"HTTP {exc.code} {exc.reason}") from None
        except TimeoutError:
            raise _Retry(f"no answer within {self.settings.timeout:g}s") from None
        except (ConnectionError, http.client.IncompleteRead, http.client.BadStatusLine) as exc:
            raise _Retry(f"connection lost ({type(exc).__name__})") from None
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, TimeoutError):
                raise _Retry(f"no answer within {self.settings.timeout:g}s") from None
            if isinstance(exc.reason, ConnectionError):
                raise _Retry(f"cannot connect ({exc.reason})") from None
            raise DownloadError(url, f"cannot connect ({exc.reason})") from None
        except ValueError as exc:  # a URL urllib cannot even parse
            raise DownloadError(url, f"not a valid URL ({exc})") from None
        return self._store(url, data, content_type, validators)

    def _read(self, url: str, response: http.client.HTTPResponse) -> bytes:
        """The body, refused as soon as it is known to be too large or too slow."""
        limit = self.settings.max_bytes
        length = response.headers.get("Content-Length")
        if length and length.isdigit() and int(length) > limit:
            raise DownloadError(url, f"too large: {int(length):,} bytes announced, the limit is {limit:,}")
        ends = time.monotonic() + self.settings.deadline
        body = io.BytesIO()
        while chunk := response.read1(CHUNK):
            if body.tell() + len(chunk) > limit:
                raise DownloadError(url, f"too large: more than the limit of {limit:,} bytes")
            body.write(chunk)
            if time.monotonic() > ends:
                raise _Retry(f"not done within {self.settings.deadline:g}s")
        return body.getvalue()

    def _store(self, url: str, data: bytes, content_type: str, validators: dict[str, str | None]) -> Fetched:
        """Check that the bytes are an image, then write them and the URL's record atomically."""
        try:
            with Image.open(io.BytesIO(data)) as image:
                image_format = image.format or ""
        except (UnidentifiedImageError, OSError, ValueError):
            raise DownloadError(url, f"not an image ({content_type}, {len(data):,} bytes)") from None
        digest = hashlib.sha256(data).hexdigest()
        name = digest + SUFFIXES.get(image_format, "." + image_format.lower())
        self._make_folders()
        target = self.folder / name
        if not (target.is_file() and target.stat().st_size == len(data)):
            _write_atomically(target, data)
        record = {"url": url, "file": name, "sha256": digest, "size": len(data), **validators}
        _write_atomically(self._record_path(url), json.dumps(record).encode(), sync=False)
        return Fetched(url, target, digest, len(data), True)

    # -- the cache --------------------------------------------------------------------------------

    def _record_path(self, url: str) -> Path:
        return self.folder / RECORDS / (hashlib.sha256(url.encode()).hexdigest() + ".json")

    def _record(self, url: str) -> dict | None:
        """The validators of the last fetch of ``url``, if its image is still in the cache."""
        try:
            record = json.loads(self._record_path(url).read_text(encoding="utf-8"))
            if record.get("url") == url and (self.folder / record["file"]).stat().st_size == record["size"]:
                return record
        except (OSError, ValueError, KeyError, TypeError):
            pass  # none yet, or damaged: fetch the whole image again
        return None

    def _make_folders(self) -> None:
        with self._made_lock:
            if not self._made:
                (self.folder / RECORDS).mkdir(parents=True, exist_ok=True)
                self._made = True

    def prune(self, keep: Iterable[str | os.PathLike[str]]) -> int:
        """Delete cached images not in ``keep`` (paths or names); returns how many went.
        Records pointing at a deleted image only cost a full download next time."""
        kept = {Path(name).name for name in keep}
        removed = 0
        if not self.folder.is_dir():
            return 0
        for entry in self.folder.iterdir():
            stale = entry.name.startswith(".") and time.time() - entry.stat().st_mtime > 3600
            if entry.is_file() and ((not entry.name.startswith(".") and entry.name not in kept) or stale):
                entry.unlink(missing_ok=True)
                removed += 1
        return removed

    # -- many URLs ----------------------------------------------------------------------------------

    def fetch_many(
        self, urls: Iterable[str], ahead: int = 256
    ) -> Iterator[tuple[str, Fetched | DownloadError]]:
        """``(url, result)`` in the order given, ``settings.workers`` downloads at a time and up
        to ``ahead`` URLs ahead of the caller (downloads go on while it embeds); a failure is
        yielded as its `DownloadError`, never raised."""
        workers = max(1, self.settings.workers)
        pending: deque[tuple[str, Future[Fetched]]] = deque()
        pool = ThreadPoolExecutor(workers, thread_name_prefix="fashionrec-download")
        try:
            for url in urls:
                pending.append((url, pool.submit(self.fetch, url)))
                if len(pending) >= max(ahead, workers):
                    yield _outcome(*pending.popleft())
            while pending:
                yield _outcome(*pending.popleft())
        finally:  # a caller that stops early (an error, Ctrl+C) waits for no queued download
            pool.shutdown(wait=True, cancel_futures=True)


def _outcome(url: str, future: Future[Fetched]) -> tuple[str, Fetched | DownloadError]:
    try:
        return url, future.result()
    except DownloadError as exc:
        return url, exc
    except Exception as exc:  # an unexpected error costs one image, not the sync
        log.exception("unexpected error downloading %s", url)
        return url, DownloadError(url, f"unexpected error: {exc!r}")


def _quoted(url: str) -> str:
    """The URL with spaces and non-ASCII characters percent-encoded (already encoded ones kept)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.netloc.encode("idna").decode("ascii") if not parts.netloc.isascii() else parts.netloc
    safe = "/%:@!$&'()*+,;=-._~"
    return urllib.parse.urlunsplit(
        (
            parts.scheme,
            host,
            urllib.parse.quote(parts.path, safe),
            urllib.parse.quote(parts.query, safe + "?"),
            "",
        )
    )


def _http_date(value: str | None) -> str | None:
    """A Last-Modified value worth sending back (a malformed one is dropped)."""
    if not value:
        return None
    with contextlib.suppress(TypeError, ValueError, IndexError):
        parsedate_to_datetime(value)
        return value
    return None


def _write_atomically(target: Path, data: bytes, *, sync: bool = True) -> None:
    """Write to a hidden temporary name beside ``target``, then rename: a reader (or a crash)
    sees the old file or the whole new one."""
    temporary = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with temporary.open("wb") as handle:
            handle.write(data)
            if sync:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)
