"""Fetching feed images over HTTP(S) into a content-addressed cache, never trusting the server.

Each image is stored once under the digest of its bytes (``<sha256>.<ext>``, written atomically),
so a changed image gets a new file name and an unchanged one keeps its name across syncs. Per URL
a small JSON record keeps the ``ETag`` and ``Last-Modified`` the server sent; the next fetch asks
with ``If-None-Match`` / ``If-Modified-Since`` and a 304 answer costs no transfer at all.

What a server can do wrong is bounded: ``timeout`` is how long it may stay silent (connecting, or
between two reads), ``deadline`` how long one image may take in all (every attempt, pause and
redirect: a watchdog closes the connection when it is up), ``max_bytes`` is enforced on the
Content-Length and again while streaming. 5xx, 408, 429, timeouts and dropped connections are
retried with exponential backoff; other 4xx answers (404...) are not.

Where a feed may send the sync is bounded too (server-side request forgery): see `guard`.
Only the standard library
(urllib: proxies from the environment, HTTPS) is used.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import http.client
import io
import json
import logging
import os
import socket
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

from ..catalog.reports import DownloadSettings as DownloadSettings
from ..errors import CatalogError, DiskFullError, DownloadError
from .guard import AddressGuard, GuardedHTTPHandler, GuardedHTTPSHandler, NoRedirect, Refused
from .guard import address_problem as address_problem

log = logging.getLogger(__name__)

USER_AGENT = "fashionrec-onnx feed sync"
RETRIED_STATUS = frozenset({408, 429, 500, 502, 503, 504})
REDIRECTS = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 5
CHUNK = 64 * 1024
RECORDS = "urls"  # subfolder of the cache holding one validator record per URL
# Pillow's format names to file suffixes (the rest: the format name in lower case).
SUFFIXES = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tif"}


def is_url(reference: str) -> bool:
    """Whether a feed's image reference is something to download rather than a file."""
    return reference.lower().startswith(("http://", "https://"))


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
        self._guard = AddressGuard(self.settings.allow_private_network)
        self._opener = urllib.request.build_opener(  # proxies from the environment; redirects by hand
            GuardedHTTPHandler(self._guard), GuardedHTTPSHandler(self._guard), NoRedirect()
        )
        self._made = False
        self._made_lock = threading.Lock()

    # -- one URL --------------------------------------------------------------------------------

    def fetch(self, url: str) -> Fetched:
        """The cached image for ``url``, asking the server whether it changed; `DownloadError`
        says why it could not be had."""
        settings = self.settings
        ends = time.monotonic() + settings.deadline  # for the image, not for one attempt
        attempt = 0
        while True:
            try:
                return self._attempt(url, ends)
            except _Retry as exc:
                pause = settings.backoff * 2**attempt
                tries = f" (after {attempt + 1} attempts)" if attempt else ""
                if attempt >= settings.retries:
                    raise DownloadError(url, f"{exc}{tries}") from None
                if time.monotonic() + pause >= ends:
                    raise DownloadError(url, f"{exc}{tries}; {self._too_long()}") from None
                log.debug("%s: %s; retrying in %.2fs", url, exc, pause)
                time.sleep(pause)
                attempt += 1

    def _too_long(self) -> str:
        return f"not done within {self.settings.deadline:g}s in all"

    def _attempt(self, url: str, ends: float) -> Fetched:
        """One attempt, redirects included, under a watchdog that closes its connections when
        the image's deadline is up (a server trickling headers or bytes cannot hold on)."""
        sockets: list[socket.socket] = []
        self._guard.local.sockets = sockets
        self._guard.local.ends = ends  # name resolution counts in the deadline too
        self._guard.local.resolved = {}
        watchdog = threading.Timer(max(0.0, ends - time.monotonic()), _shut, [sockets])
        watchdog.daemon = True
        watchdog.start()
        try:
            return self._follow(url, ends)
        except (_Retry, DownloadError) as exc:
            if time.monotonic() >= ends:
                why = exc.reason if isinstance(exc, DownloadError) else str(exc)
                raise DownloadError(url, f"{self._too_long()} ({why})") from None
            raise
        finally:
            watchdog.cancel()
            self._guard.local.sockets = None
            self._guard.local.ends = self._guard.local.resolved = None

    def _follow(self, url: str, ends: float) -> Fetched:
        """The image at ``url``, following at most `MAX_REDIRECTS` redirects, each checked."""
        record = self._record(url)
        headers = {"User-Agent": USER_AGENT, "Accept": "image/*"}
        if record:
            if record.get("etag"):
                headers["If-None-Match"] = record["etag"]
            if record.get("last_modified"):
                headers["If-Modified-Since"] = record["last_modified"]
        target = url
        for _ in range(MAX_REDIRECTS + 1):
            location = self._get(url, target, headers, record, ends)
            if isinstance(location, Fetched):
                return location
            target = location
        raise DownloadError(url, f"more than {MAX_REDIRECTS} redirects")

    def _get(
        self, url: str, target: str, headers: dict[str, str], record: dict | None, ends: float
    ) -> Fetched | str:
        """One request: the image, or the URL a redirect points to (checked before it is asked)."""
        remaining = ends - time.monotonic()
        if remaining <= 0:
            raise DownloadError(url, self._too_long())
        try:
            request = urllib.request.Request(_quoted(target), headers=headers)
            if request.type not in ("http", "https"):
                raise DownloadError(url, f"redirected to a {request.type}: URL; only http(s) is fetched")
            parts = urllib.parse.urlsplit(request.full_url)
            port = parts.port or (443 if request.type == "https" else 80)
            proxy = urllib.request.getproxies().get(request.type)
            proxied = bool(proxy) and not urllib.request.proxy_bypass(request.host)
            self._guard.check_host(parts.hostname or "", port, proxied)
            with self._opener.open(request, timeout=min(self.settings.timeout, remaining)) as response:
                data = self._read(url, response, ends)
                validators = {
                    "etag": response.headers.get("ETag"),
                    "last_modified": _http_date(response.headers.get("Last-Modified")),
                }
                content_type = response.headers.get("Content-Type") or "no Content-Type"
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code == 304 and record:
                return Fetched(url, self.folder / record["file"], record["sha256"], record["size"], False)
            if exc.code in REDIRECTS and exc.headers.get("Location"):
                return urllib.parse.urljoin(target, exc.headers["Location"])
            if exc.code in RETRIED_STATUS:
                raise _Retry(f"HTTP {exc.code} {exc.reason}") from None
            raise DownloadError(url, f"HTTP {exc.code} {exc.reason}") from None
        except Refused as exc:
            raise DownloadError(url, f"refused: {exc}") from None
        except TimeoutError:
            raise _Retry(f"no answer within {self.settings.timeout:g}s") from None
        except (ConnectionError, http.client.IncompleteRead, http.client.BadStatusLine) as exc:
            raise _Retry(f"connection lost ({type(exc).__name__})") from None
        except http.client.HTTPException as exc:  # a header line over 64 kB, 100+ headers, HTTP/9.9
            raise DownloadError(url, f"the server's answer is not HTTP this client reads ({exc})") from None
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, Refused):
                raise DownloadError(url, f"refused: {exc.reason}") from None
            if isinstance(exc.reason, TimeoutError):
                raise _Retry(f"no answer within {self.settings.timeout:g}s") from None
            if isinstance(exc.reason, ConnectionError):
                raise _Retry(f"cannot connect ({exc.reason})") from None
            raise DownloadError(url, f"cannot connect ({exc.reason})") from None
        except DownloadError as exc:
            raise DownloadError(url, exc.reason) from None
        except (ValueError, UnicodeError) as exc:  # a URL urllib cannot even parse
            raise DownloadError(url, f"not a valid URL ({exc})") from None
        except OSError as exc:  # the watchdog closed the socket under a read
            raise _Retry(f"connection lost ({exc.strerror or type(exc).__name__})") from None
        if time.monotonic() >= ends:  # the watchdog may have cut the body short
            raise DownloadError(url, self._too_long())
        return self._store(url, data, content_type, validators)

    def _read(self, url: str, response: http.client.HTTPResponse, ends: float) -> bytes:
        """The body, refused as soon as it is known to be too large or too slow."""
        limit = self.settings.max_bytes
        length = response.headers.get("Content-Length")
        if length and length.isdigit() and int(length) > limit:
            raise DownloadError(url, f"too large: {int(length):,} bytes announced, the limit is {limit:,}")
        body = io.BytesIO()
        while chunk := response.read1(CHUNK):
            if body.tell() + len(chunk) > limit:
                raise DownloadError(url, f"too large: more than the limit of {limit:,} bytes")
            body.write(chunk)
            if time.monotonic() > ends:
                raise DownloadError(url, self._too_long())
        return body.getvalue()

    def _store(self, url: str, data: bytes, content_type: str, validators: dict[str, str | None]) -> Fetched:
        """Check that the bytes are an image, then write them and the URL's record atomically."""
        try:
            with Image.open(io.BytesIO(data)) as image:
                image_format = image.format or ""
        except (UnidentifiedImageError, OSError, ValueError):
            raise DownloadError(url, f"not an image ({content_type}, {len(data):,} bytes)") from None
        except Image.DecompressionBombError as exc:  # a header declaring far more pixels than a photo
            raise DownloadError(url, f"too large an image ({exc})") from None
        digest = hashlib.sha256(data).hexdigest()
        name = digest + SUFFIXES.get(image_format, "." + image_format.lower())
        target = self.folder / name
        try:
            self._make_folders()
            if not (target.is_file() and target.stat().st_size == len(data)):
                _write_atomically(target, data)
            record = {"url": url, "file": name, "sha256": digest, "size": len(data), **validators}
            _write_atomically(self._record_path(url), json.dumps(record).encode(), sync=False)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFullError(
                    f"the disk holding {self.folder} is full; the sync stopped there and what it "
                    "committed before is kept. Free some space and run it again."
                ) from exc
            raise
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

    def check_writable(self) -> None:
        """`DownloadError`-free refusal before any download when the cache cannot be written."""
        try:
            self._make_folders()
            probe = self.folder / f".probe-{os.getpid()}.tmp"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise CatalogError(
                f"cannot write the image cache {self.folder} ({exc.strerror}); nothing was downloaded."
            ) from exc

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


def _shut(sockets: list[socket.socket]) -> None:
    """The watchdog's work: end the reads of a fetch whose deadline is up."""
    for sock in list(sockets):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _outcome(url: str, future: Future[Fetched]) -> tuple[str, Fetched | DownloadError]:
    try:
        return url, future.result()
    except DownloadError as exc:
        return url, exc
    except (OSError, CatalogError):  # the cache cannot be written (a full disk): stop the sync
        raise
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
