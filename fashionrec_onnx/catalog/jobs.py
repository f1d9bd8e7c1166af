"""The jobs built on top of the catalog (indexing a folder, syncing a feed, importing and
exporting vectors, learning a refinement) register here, so that `Catalog` offers them as
methods without importing the packages above it: `feeds`, `interchange` and `quality` register
theirs when they are imported, and ``import fashionrec_onnx`` imports all three."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import FashionrecError

Job = Callable[..., Any]

PROVIDERS = {
    "index_folder": "fashionrec_onnx.feeds",  # local catalogs and `remote.RemoteCatalog`s alike
    "sync": "fashionrec_onnx.feeds",
    "import_vectors": "fashionrec_onnx.interchange",
    "export_vectors": "fashionrec_onnx.interchange",
    "refine": "fashionrec_onnx.quality",
    # catalogs on a server: `remote` subclasses `Catalog`, so the facade reaches it through here
    "create_remote": "fashionrec_onnx.catalog.remote",
    "open_remote": "fashionrec_onnx.catalog.remote",
    "remote_exists": "fashionrec_onnx.catalog.remote",
}

_registered: dict[str, Job] = {}


def register(name: str, job: Job) -> None:
    """Make ``job(catalog, ...)`` the body of ``Catalog.<name>``."""
    if name not in PROVIDERS:
        raise ValueError(f"no Catalog method {name!r} takes a job; known: {', '.join(PROVIDERS)}")
    _registered[name] = job


def job(name: str) -> Job:
    """The registered body of ``Catalog.<name>``."""
    try:
        return _registered[name]
    except KeyError:
        raise FashionrecError(
            f"Catalog.{name} is provided by {PROVIDERS[name]}, which is not imported; "
            f"`import {PROVIDERS[name]}` first."
        ) from None
