"""One exception family, so callers can catch everything from the library in one place.

Every message says what happened and what to do about it.
"""

from __future__ import annotations


class FashionrecError(Exception):
    """Base class of every error the library raises on purpose."""


class ModelError(FashionrecError):
    """The ONNX model is missing, unreadable, or not one of ours."""


class ModelMismatchError(ModelError):
    """A catalog was built with a different model than the one offered."""


class ImageLoadError(FashionrecError, ValueError):
    """An input could not be turned into an image (not an image, truncated, too large...)."""

    def __init__(self, source: str, reason: str) -> None:
        self.source = source
        self.reason = reason
        super().__init__(f"cannot load image {source}: {reason}")


class CatalogError(FashionrecError):
    """A catalog operation cannot be done (missing catalog, unknown key, bad argument)."""


class BadArgumentError(CatalogError, ValueError):
    """An argument is out of range (k < 1, a vector of the wrong width...); the message says which."""


class UnknownKeyError(CatalogError, KeyError):
    """No item is stored under this key."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DiskFullError(CatalogError, OSError):
    """A write failed for lack of space; the catalog keeps its previous good state."""


class StorageUnavailableError(CatalogError):
    """The catalog's storage cannot answer now: its server (Milvus) cannot be reached (the message
    names it, never a password), or a local database stayed locked or out of memory. Nothing is
    damaged; the same call may succeed later."""


class CatalogCorruptError(CatalogError):
    """A catalog file is truncated or corrupt; the message names the file and the recovery."""


class RottenVectorError(CatalogCorruptError):
    """Stored vectors that are not finite unit vectors (the vector file is damaged at their rows):
    ``keys`` names them all, so an export can leave them out and an import can replace them."""

    def __init__(self, message: str, keys: list[str]) -> None:
        super().__init__(message)
        self.keys = keys


class ExportError(FashionrecError):
    """The export could not produce a valid model (weights, output path, parity)."""


class WeightsUnavailableError(ExportError):
    """Pretrained weights could not be had (offline, no cached file); the message says where to put them."""


class DownloadError(FashionrecError):
    """An image URL could not be fetched (HTTP error, timeout, too large, not an image)."""

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"cannot download {url}: {reason}")
