"""Catalogs on a server (Milvus): creating, opening and finding them; the catalog itself is
`remote_catalog.RemoteCatalog`, its searches `remote_search`'s.

`Catalog.create`, `Catalog.open` and `Catalog.open_or_create` return a `RemoteCatalog` for a
``milvus://`` location. It keeps `Catalog`'s public API, so what is built on that API (sync,
Parquet import and export, evaluate, the service, the CLI) works unchanged; the jobs the local
directory does with its own files are done here through the backend:

- search: the engine's HNSW with the filter as a boolean expression and the query items (with
  their products) left out by key; grouped by product on the client (the Milvus 2.3 test server
  ignores ``group_by_field``, and grouping by a JSON field is not a server feature anyway): more
  hits asked for until k distinct products are in hand, as the local planner does.
- exact search and `check`: brute force over the stored vectors, streamed in batches from the
  engine's query iterator (linear in the catalog; fine for checks, slow for millions).
- settings (model fingerprint and probe, model path, dimension, HNSW parameters, product field,
  format) in the backend, so any machine that opens the URI gets the same catalog.

- near-duplicate reports: the local catalog's rules and report (`duplicates`), each item's
  neighbours from the engine's index (`remote_duplicates`); items whose image file can be read
  on this machine are judged by pixels from thumbnails made for the pass (none are kept).
- feed ownership: which feed added an item is recorded beside it (`set_feed`), so a sync keeps
  its hands off items indexed from folders or added by other feeds, as on a local catalog.

- collapsing near-duplicates in searches: the groups of a `duplicates` pass, kept a while.

Not available on a remote catalog (a clear error): PCA reduction, graph rebuilds, float16
vectors.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from ..embedder import Embedder
from ..errors import CatalogError, ModelMismatchError
from ..model import ModelInfo
from . import jobs, products
from .hnsw import HnswParams
from .location import MilvusLocation
from .remote_catalog import RemoteCatalog as RemoteCatalog

log = logging.getLogger(__name__)

FORMAT = "milvus-1"


def _model_identity(model: str | os.PathLike[str] | Embedder) -> tuple[Path, ModelInfo]:
    from .opening import model_identity

    return model_identity(model)


def _connect(location: MilvusLocation) -> Any:
    from .milvus_backend import MilvusBackend

    return MilvusBackend.connect(location)


def exists(location: MilvusLocation) -> bool:
    """Whether the collection is there (a catalog or not: opening says which)."""
    backend = _connect(location)
    try:
        return bool(backend.exists())
    finally:
        backend.close()


def create(
    location: MilvusLocation,
    model: str | os.PathLike[str] | Embedder,
    params: HnswParams,
    exist_ok: bool,
    product_field: str | None,
    threads: int | None,
) -> RemoteCatalog:
    """A new collection bound to ``model``, or (``exist_ok``) the one there if it has the same."""
    model_path, info = _model_identity(model)
    backend = _connect(location)
    try:
        if backend.exists():
            if not exist_ok:
                raise CatalogError(
                    f"a catalog already exists at {location}; open it with Catalog.open (or pass "
                    "exist_ok=True, or use Catalog.open_or_create)."
                )
        else:
            settings = {f"model.{k}": v for k, v in info.to_metadata().items()}
            settings.update(
                {
                    "catalog_format": FORMAT,
                    "model_path": str(model_path),
                    "dim": str(info.dim),
                    "metric": "l2",
                    "hnsw.M": str(params.M),
                    "hnsw.ef_construction": str(params.ef_construction),
                    "hnsw.ef": str(params.ef),
                    products.SETTING: product_field or "",
                }
            )
            backend.create(info.dim, params.M, params.ef_construction, settings)
    except BaseException:
        backend.close()
        raise
    return _opened(backend, model, readonly=False, threads=threads)


def open_remote(
    location: MilvusLocation,
    model: str | os.PathLike[str] | Embedder | None,
    readonly: bool,
    threads: int | None,
) -> RemoteCatalog:
    backend = _connect(location)
    try:
        if not backend.exists():
            raise CatalogError(
                f"no catalog at {location}; create one with "
                f"`fashionrec index IMAGES --catalog {location} --model MODEL`."
            )
    except BaseException:
        backend.close()
        raise
    return _opened(backend, model, readonly=readonly, threads=threads)


def _opened(
    backend: Any, model: str | os.PathLike[str] | Embedder | None, readonly: bool, threads: int | None
) -> RemoteCatalog:
    try:
        settings = backend.settings()
        if settings.get("catalog_format") != FORMAT:
            raise CatalogError(
                f"{backend.describe()} is not a fashionrec catalog (format "
                f"{settings.get('catalog_format')!r}, expected {FORMAT!r}); choose another collection name."
            )
        info = ModelInfo.from_metadata(
            {k[len("model.") :]: v for k, v in settings.items() if k.startswith("model.")},
            source=backend.describe(),
        )
        model_path = Path(settings.get("model_path", ""))
        embedder = None
        if model is not None:
            model_path, offered = _model_identity(model)
            if offered.fingerprint != info.fingerprint:
                raise ModelMismatchError(
                    f"{backend.describe()} was built with model {info.fingerprint} ({info.weights}, "
                    f"{info.precision}) but {model_path} is {offered.fingerprint} ({offered.weights}, "
                    f"{offered.precision}). Open it without a model to use the recorded one, or index "
                    "into a new catalog."
                )
            embedder = model if isinstance(model, Embedder) else None
        backend.load()
    except BaseException:
        backend.close()
        raise
    return RemoteCatalog(backend, backend.location, info, settings, model_path, embedder, threads, readonly)


jobs.register("create_remote", create)
jobs.register("open_remote", open_remote)
jobs.register("remote_exists", exists)
