"""Every failure as JSON ``{"status", "error", "detail"}`` with the right HTTP status, never a
traceback; a server's file paths are taken out of messages unless the service exposes them."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping

from ..errors import (
    BadArgumentError,
    CatalogCorruptError,
    CatalogError,
    DiskFullError,
    FashionrecError,
    ImageLoadError,
    ModelError,
    StorageUnavailableError,
    UnknownKeyError,
)

log = logging.getLogger("fashionrec.service")


class ServiceError(Exception):
    """A refusal with its HTTP status, a short machine-readable code and a sentence for people."""

    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail

    def body(self) -> dict[str, object]:
        return {"status": self.status, "error": self.error, "detail": self.detail}


def bad_parameter(detail: str) -> ServiceError:
    return ServiceError(422, "bad_parameter", detail)


def from_library(exc: FashionrecError, hidden: Mapping[str, str]) -> ServiceError:
    """The status a library error means for a remote caller; ``hidden`` paths are masked."""
    if isinstance(exc, ImageLoadError):
        return ServiceError(400, "unreadable_image", f"cannot read the uploaded image: {exc.reason}")
    message = masked(str(exc), hidden)
    if isinstance(exc, UnknownKeyError):
        return ServiceError(404, "unknown_key", message)
    if isinstance(exc, (CatalogCorruptError, DiskFullError, ModelError, StorageUnavailableError)):
        log.error("the catalog or model failed: %s", exc)
        return ServiceError(503, "unavailable", message)
    if isinstance(exc, (BadArgumentError, CatalogError)):  # what the caller asked cannot be done
        return ServiceError(422, "bad_parameter", message)
    return ServiceError(500, "internal", message)


def masked(message: str, hidden: Mapping[str, str]) -> str:
    """``message`` with each hidden path (longest first) replaced by its stand-in, where it
    stands as a whole path: a catalog served as ``cat`` or ``data`` leaves "category" and
    "database" alone (a path ends where no further name character follows)."""
    for path in sorted((p for p in hidden if p), key=len, reverse=True):
        whole = re.compile(rf"(?<![\w./-]){re.escape(path)}(?![\w-]|\.\w)")
        message = whole.sub(hidden[path].replace("\\", "\\\\"), message)
    return message
