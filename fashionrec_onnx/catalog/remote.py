"""`Catalog` over a storage `backend.Backend`: a catalog that lives on a server (Milvus).

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

- near-duplicate reports: each item's neighbours from the engine's index (`remote_duplicates`).
- feed ownership: which feed added an item is recorded beside it (`set_feed`), so a sync keeps
  its hands off items indexed from folders or added by other feeds, as on a local catalog.

- collapsing near-duplicates in searches: the groups of a `duplicates` pass, kept a while.

Not available on a remote catalog (a clear error): PCA reduction, graph rebuilds, float16
vectors.
"""

from __future__ import annotations

import base64
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..embedder import Embedder
from ..errors import BadArgumentError, CatalogError, ModelError, ModelMismatchError, UnknownKeyError
from ..images import Box, check_box
from ..json_values import bad_field
from ..model import ModelInfo, recorded_fingerprint
from . import jobs, products
from .backend import NO_LABEL, Backend, Neighbour
from .duplicates import NEIGHBOURS
from .facade import Catalog
from .hnsw import DEFAULT_EF, DEFAULT_EF_CONSTRUCTION, DEFAULT_M, HnswParams
from .kernels import normalised, row_norms
from .location import MilvusLocation
from .maintenance import CheckReport, recall_at_k
from .oracle import squared_distances
from .querying import (
    COLLAPSE_EXTRA,
    Hit,
    KeyQuery,
    Queries,
    Query,
    combined,
    is_vector,
    several,
    shown,
    unit,
)
from .store import Item, NewItem

if TYPE_CHECKING:
    from ..feeds.folders import IndexReport
    from .duplicates import DuplicateReport

log = logging.getLogger(__name__)

FORMAT = "milvus-1"
PROBE_SIMILARITY = 0.999
EXACT_BATCH = 2_000
GROUPS_SECONDS = 600.0  # how long near-duplicate groups found for collapsed searches are kept

Method = Callable[[np.ndarray, int, "Mapping[str, Any] | None", list[str]], list[Neighbour]]


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


class RemoteCatalog(Catalog):
    """A catalog whose items, vectors and settings live behind a `Backend` (Milvus)."""

    def __init__(
        self,
        backend: Backend,
        location: MilvusLocation,
        info: ModelInfo,
        settings: dict[str, str],
        model_path: Path,
        embedder: Embedder | None,
        threads: int | None,
        readonly: bool,
    ) -> None:
        self._backend = backend
        self._info = info
        self._settings = settings
        self.path = location  # type: ignore[assignment]  # shown without its password
        self.model_path = model_path
        self._embedder = embedder
        self._embedder_lock = threading.Lock()
        self._threads = threads
        self._readonly = readonly
        self._closed = False
        self._probed = False
        self._groups: tuple[float, int, dict[str, int]] | None = None  # see `_duplicate_groups`

    # -- what the catalog is -------------------------------------------------------------------

    @property
    def backend(self) -> Backend:
        return self._backend

    @property
    def info(self) -> ModelInfo:
        return self._info

    @property
    def model_fingerprints(self) -> frozenset[str]:
        """``info.fingerprint``, and the one recorded at creation if an earlier scheme computed it."""
        recorded = recorded_fingerprint(
            {k[len("model.") :]: v for k, v in self._settings.items() if k.startswith("model.")}
        )
        return frozenset({self._info.fingerprint, recorded or self._info.fingerprint})

    @property
    def dim(self) -> int:
        return self._info.dim

    def _setting(self, name: str, default: str = "") -> str:
        return self._settings.get(name, default)

    def _refresh(self) -> None:
        """Settings another process may have changed (product field, ef)."""
        self._settings = self._backend.settings()

    @property
    def params(self) -> HnswParams:
        return HnswParams(
            int(self._setting("hnsw.M", str(DEFAULT_M))),
            int(self._setting("hnsw.ef_construction", str(DEFAULT_EF_CONSTRUCTION))),
            int(self._setting("hnsw.ef", str(DEFAULT_EF))),
        )

    @property
    def readonly(self) -> bool:
        return self._readonly

    @property
    def generation(self) -> int:
        """A remote catalog keeps no change counter: the engine is the state (always 0)."""
        return 0

    @property
    def product_field(self) -> str | None:
        self._refresh()
        return self._setting(products.SETTING) or None

    @property
    def graph_dim(self) -> int:
        return self.dim

    @property
    def reduction(self) -> None:
        return None

    def left_out_of_graph(self) -> list[str]:
        """Nothing: every vector the engine holds passed the finite unit-vector gate."""
        return []

    def require_writable(self, what: str) -> None:
        """Refuse ``what`` before any work on a catalog opened read-only (the server's own
        permissions are checked by the server at the first write)."""
        if self._readonly:
            raise CatalogError(f"{self.path} was opened read-only, and {what} changes it; nothing was done.")

    def feed_keys(self, key_prefix: str) -> list[str]:
        """Keys of the items the feed with this key prefix added (its owner records, for items
        still held): the only ones its sync may remove."""
        if not key_prefix:
            return []
        recorded = [key for key in self._backend.keys_of_feed(key_prefix) if key.startswith(key_prefix)]
        return sorted(self._backend.fetch(recorded))

    def feed_owners(self, keys: Iterable[str]) -> dict[str, str | None]:
        """For the keys held: the key prefix of the feed that owns each item, or None."""
        held = list(self._backend.fetch(list(keys)))
        owners = self._backend.feed_owners(held)
        return {key: owners.get(key) for key in held}

    def claim_for_feed(self, key_prefix: str, keys: Iterable[str]) -> int:
        """Record the feed as the owner of existing items (written before owners were recorded);
        returns how many were not recorded yet."""
        self.require_writable("recording a feed's items")
        owners = self.feed_owners(keys)
        unclaimed = [key for key, owner in owners.items() if owner != key_prefix]
        self._backend.set_feed(unclaimed, key_prefix)
        return len(unclaimed)

    def _writable(self) -> None:
        if self._readonly:
            raise CatalogError(
                f"{self.path} was opened read-only; open it without readonly=True to change it"
            )

    def set_product_field(self, field: str | None) -> None:
        self._writable()
        field = products.checked_field(field)
        self._backend.set_settings({products.SETTING: field or ""})
        self._refresh()

    def product_count(self) -> int | None:
        field = self.product_field
        if field is None:
            return None
        seen: set[str] = set()
        alone = 0
        for batch in self._backend.iterate():
            for _, row, _ in batch:
                value = row["metadata"].get(field)
                if value is None:
                    alone += 1
                else:
                    seen.add(str(value))
        return len(seen) + alone

    def set_ef(self, ef: int) -> None:
        self._writable()
        HnswParams(self.params.M, self.params.ef_construction, ef)  # validates
        self._backend.set_settings({"hnsw.ef": str(ef)})
        self._refresh()

    @property
    def embedder(self) -> Embedder:
        """The model, loaded on first use: the one given on open, else the recorded path when it
        exists here; checked against the recorded fingerprint and probe embedding."""
        with self._embedder_lock:
            if self._embedder is None:
                if not self.model_path.is_file():
                    raise ModelError(
                        f"the model {self.path} was built with, {self.model_path}, is not on this "
                        "machine; pass the same model explicitly (Catalog.open(uri, model=...) or --model)."
                    )
                embedder = Embedder(self.model_path, threads=self._threads)
                if embedder.fingerprint != self._info.fingerprint:
                    embedder.close()
                    raise ModelMismatchError(
                        f"{self.model_path} is not the model {self.path} was built with (fingerprint "
                        f"{embedder.fingerprint}, catalog {self._info.fingerprint}); pass the original "
                        "model with --model."
                    )
                self._embedder = embedder
            if not self._probed:
                self._check_probe(self._embedder)
                self._probed = True
            return self._embedder

    def _check_probe(self, embedder: Embedder) -> None:
        from .opening import _probe_image

        vector = embedder.embed_one(_probe_image())
        recorded = self._setting("model.probe")
        if not recorded:
            if not np.all(np.isfinite(vector)):
                raise ModelMismatchError(
                    f"{embedder.model_path} gives NaN embeddings; it cannot index into {self.path}."
                )
            if not self._readonly:
                self._backend.set_settings(
                    {"model.probe": base64.b64encode(vector.astype("<f4").tobytes()).decode()}
                )
            return
        expected = np.frombuffer(base64.b64decode(recorded), "<f4")
        finite = len(expected) == len(vector) and np.all(np.isfinite(vector))
        similarity = float(vector @ expected) if finite else -1.0
        if not similarity >= PROBE_SIMILARITY:
            raise ModelMismatchError(
                f"{embedder.model_path} carries the metadata of the model {self.path} was built with, "
                f"but its weights compute other embeddings (probe similarity {similarity:.4f})."
            )

    def save(self) -> None:
        """Every write is in the engine when it returns; this seals it, so the engine indexes it
        now rather than when the server next seals on its own (call it after a bulk load)."""
        if not self._readonly:
            self._backend.flush()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._backend.close()

    # -- contents ------------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._backend.count()

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and bool(self._backend.fetch([key]))

    def iter_items(self) -> Iterator[Item]:
        for batch in self._backend.iterate():
            for key, row, _ in batch:
                yield _item(key, row)

    def keys(self, prefix: str | None = None) -> list[str]:
        keys = [item.key for item in self.iter_items()]
        return sorted(key for key in keys if not prefix or key.startswith(prefix))

    def paths_under(self, folder: str | os.PathLike[str]) -> list[str]:
        below = str(folder).rstrip("/") + "/"
        return [item.path for item in self.iter_items() if item.path and item.path.startswith(below)]

    def get(self, key: str) -> Item:
        found = self._backend.fetch([key]) if isinstance(key, str) else {}
        if key not in found:
            raise UnknownKeyError(f"no item with key {shown(str(key))} in {self.path}.")
        return _item(key, found[key][0])

    def get_many(self, keys: Iterable[str]) -> dict[str, Item]:
        found = self._backend.fetch(list(keys))
        return {key: _item(key, row) for key, (row, _) in found.items()}

    def vector(self, key: str) -> np.ndarray:
        return self.vectors([key])[0]

    def vectors(self, keys: Iterable[str]) -> np.ndarray:
        keys = list(keys)
        found = self._backend.fetch(keys, vectors=True)
        missing = [key for key in keys if key not in found]
        if missing:
            raise UnknownKeyError(
                f"no item with key {shown(missing[0])} in {self.path} ({len(missing)} unknown)."
            )
        if not keys:
            return np.zeros((0, self.dim), np.float32)
        return np.stack([found[key][1] for key in keys]).astype(np.float32)

    def categories(self, field: str = "category") -> list[str]:
        values = {str(item.metadata[field]) for item in self.iter_items() if field in item.metadata}
        return sorted(values)

    def summary(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "backend": "milvus",
            "items": len(self),
            "model_path": str(self.model_path),
            "model_fingerprint": self.info.fingerprint,
            "weights": self.info.weights,
            "precision": self.info.precision,
            "input_size": self.info.input_size,
            "resize": self.info.resize,
            "dim": self.dim,
            "M": self.params.M,
            "ef_construction": self.params.ef_construction,
            "ef": self.params.ef,
            "index": "HNSW (L2) in Milvus",
            "graph_dim": self.dim,
            "reduction": None,
            "vector_dtype": "float32",
            "product_field": self.product_field,
        }

    # -- writing -------------------------------------------------------------------------------

    def _write(self, new: list[NewItem], feed: str | None = None) -> None:
        """Items, then their owner (``feed``, or none: an item written again by a folder or by
        hand is no feed's, as on a local catalog). A crash in between leaves an item without its
        owner, which the feed's next sync claims back by its path."""
        self._writable()
        _check_metadata(new)
        self._groups = None
        self._backend.write(new)
        keys = [item.key for item in new]
        self._backend.set_feed(keys, feed)
        self._backend.forget_removed(keys)

    def add(
        self,
        key: str,
        image_or_vector: Any,
        *,
        path: str | os.PathLike[str] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        if is_vector(image_or_vector):
            vector = unit(image_or_vector, self.dim)
        else:
            vector = self.embedder.embed_one(image_or_vector)
            if path is None and isinstance(image_or_vector, (str, os.PathLike)):
                path = Path(image_or_vector).expanduser().resolve()
        self._write([NewItem(key, vector, str(path) if path else None, metadata=dict(metadata or {}))])

    def add_many(
        self,
        keys: Iterable[str],
        vectors: np.ndarray,
        *,
        paths: Iterable[str | None] | None = None,
        metadata: Iterable[Mapping[str, Any] | None] | None = None,
        sizes: Iterable[int | None] | None = None,
        mtimes_ns: Iterable[int | None] | None = None,
        feed: str | None = None,
    ) -> int:
        keys = list(keys)
        vectors = np.asarray(vectors)  # normalised before float32: 1e39 is finite in float64
        if vectors.shape != (len(keys), self.dim):
            raise CatalogError(f"expected vectors of shape ({len(keys)}, {self.dim}), got {vectors.shape}")
        if len(set(keys)) != len(keys):
            raise CatalogError("add_many got the same key twice in one batch; keys must be unique")
        if any(not isinstance(key, str) or not key for key in keys):
            raise BadArgumentError("every key must be a non-empty string")
        norms = row_norms(vectors)[:, None]  # float64, scaled: values near 3e38 do not overflow
        if not np.all(np.isfinite(vectors)) or np.any(norms == 0):
            raise CatalogError(
                "a vector is zero or holds NaN or infinite values; nothing of the batch was written"
            )
        off = ~(np.abs(norms - 1.0) <= 1e-6)  # unit already: kept bit for bit
        vectors = np.where(off, normalised(vectors), vectors).astype(np.float32)
        columns = [
            list(values) if values is not None else [None] * len(keys)
            for values in (paths, metadata, sizes, mtimes_ns)
        ]
        new = [
            NewItem(k, v, p, s, t, metadata=dict(m or {}))
            for k, v, p, m, s, t in zip(keys, vectors, *columns)
        ]
        known = self._backend.fetch(keys)
        self._write(new, feed)
        return len(keys) - len(known)

    def remove(self, *keys: str, remember: bool = True) -> int:
        self._writable()
        keys = tuple(key for key in keys if isinstance(key, str))
        present = list(self._backend.fetch(list(keys)))
        if remember and present:  # remembered first: a crash in between leaves the item present
            self._backend.remember_removed(present)
        removed = self._backend.remove(present)
        self._backend.set_feed(removed, None)  # after: a stale owner of an absent key is ignored
        return len(removed)

    def removed_keys(self) -> list[str]:
        return self._backend.removed_keys()

    def update_metadata(self, metadata: Mapping[str, Mapping[str, Any]]) -> int:
        self._writable()
        values = {str(key): dict(fields) for key, fields in metadata.items()}
        found = self._backend.fetch(list(values), vectors=True)
        changed = [
            NewItem(key, vector, row["path"], row["size"], row["mtime_ns"], metadata=values[key])
            for key, (row, vector) in found.items()
            if row["metadata"] != values[key]
        ]
        _check_metadata(changed)
        self._backend.write(changed)
        return len(changed)

    def rebuild(self) -> list[str]:
        """The engine keeps its own index: nothing to rebuild here, and nothing left out (every
        write passed the finite unit-vector gate)."""
        return []

    def index_folder(self, folder: str | os.PathLike[str], **options: Any) -> IndexReport:
        """See `Catalog.index_folder`; done by `feeds.remote_folders` (registered in `jobs`)."""
        report: IndexReport = jobs.job("index_folder_remote")(self, folder, **options)
        return report

    # -- searching -----------------------------------------------------------------------------

    def search(
        self,
        query: Queries,
        k: int = 5,
        filter: Any = None,
        *,
        box: Box | None = None,
        collapse_duplicates: bool = False,
        group_by: str | None = None,
        negative: Queries | None = None,
    ) -> list[Hit]:
        return self._answer(self._approximate, query, k, filter, box, collapse_duplicates, group_by, negative)

    def exact_search(
        self,
        query: Queries,
        k: int = 5,
        filter: Any = None,
        *,
        box: Box | None = None,
        collapse_duplicates: bool = False,
        group_by: str | None = None,
        negative: Queries | None = None,
    ) -> list[Hit]:
        return self._answer(self._exact, query, k, filter, box, collapse_duplicates, group_by, negative)

    def more_like_this(
        self,
        key: str | list[str],
        k: int = 5,
        filter: Any = None,
        *,
        collapse_duplicates: bool = False,
        group_by: str | None = None,
        negative: list[str] | None = None,
    ) -> list[Hit]:
        queries: list[Query] = [self._key_query(x) for x in ([key] if isinstance(key, str) else key)]
        unlike: list[Query] = [self._key_query(x) for x in negative or []]
        return self._answer(
            self._approximate, queries, k, filter, None, collapse_duplicates, group_by, unlike or None
        )

    def duplicates(self, threshold: float | None = None, *, neighbours: int = NEIGHBOURS) -> DuplicateReport:
        """See `Catalog.duplicates`; each item's neighbours come from the engine's index, in
        batched searches (`remote_duplicates`)."""
        from .remote_duplicates import find

        report = find(self._backend, self.params.ef, threshold, neighbours)
        if threshold is None and neighbours == NEIGHBOURS:
            self._remember_groups(report)
        return report

    def _duplicate_groups(self) -> dict[str, int]:
        """Key -> near-duplicate group at the default threshold, for collapsed searches. Found
        once (a pass over the catalog) and kept while the item count stays the same and this
        handle writes nothing, for at most `GROUPS_SECONDS` (other processes' edits that keep
        the count show after that)."""
        with self._embedder_lock:
            known = self._groups
        if known is not None:
            when, count, groups = known
            if time.monotonic() - when < GROUPS_SECONDS and count == len(self):
                return groups
        return self._remember_groups(self.duplicates())

    def _remember_groups(self, report: DuplicateReport) -> dict[str, int]:
        groups = {key: number for number, group in enumerate(report) for key in group.keys}
        with self._embedder_lock:
            self._groups = (time.monotonic(), report.items, groups)
        return groups

    def _query_vector(self, query: Query, box: Box | None) -> tuple[np.ndarray, str | None]:
        """The vector of one query, and the key to leave out ("more like this")."""
        if box is not None:
            check_box(box)
            if isinstance(query, KeyQuery) or is_vector(query):
                raise BadArgumentError("a box crops an image; it cannot apply to a catalog key or a vector")
            return self.embedder.embed_one(query, box=box), None
        key = query.key if isinstance(query, KeyQuery) else query if isinstance(query, str) else None
        if key is not None:
            found = self._backend.fetch([key], vectors=True) if len(key) <= 4096 else {}
            if key in found:
                return found[key][1], key
            if isinstance(query, KeyQuery):
                raise UnknownKeyError(f"no item with key {shown(key)} in {self.path}.")
            try:
                exists = Path(key).expanduser().exists()
            except (OSError, ValueError):
                exists = False
            if not exists:
                raise CatalogError(f"{shown(key)} is neither a key in {self.path} nor an image file.")
        if is_vector(query):
            return unit(query, self.dim), None  # type: ignore[arg-type]
        return self.embedder.embed_one(query), None  # type: ignore[arg-type]

    def _answer(
        self,
        method: Method,
        query: Queries,
        k: int,
        filter: Any,
        box: Box | None,
        collapse_duplicates: bool,
        group_by: str | None,
        negative: Queries | None,
    ) -> list[Hit]:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise BadArgumentError(f"k must be a whole number >= 1, got {k!r}")
        field = self.product_field
        grouped = products.checked_group_by(group_by, field)
        positives, negatives = several(query), several(negative) if negative is not None else []
        if not positives:
            raise BadArgumentError("a search needs at least one query (an image, a vector or a key)")
        if box is not None and (len(positives) > 1 or negatives):
            raise BadArgumentError("a box crops one query image; it cannot apply to several queries")
        wanted = [
            [self._query_vector(q, box) for q in positives],
            [self._query_vector(q, None) for q in negatives],
        ]
        vector = combined([v for v, _ in wanted[0]], [v for v, _ in wanted[1]])
        exclude = [key for side in wanted for _, key in side if key is not None]
        if field is not None and exclude:
            exclude = self._whole_products(exclude, field)
        condition: Mapping[str, Any] | None = None
        if callable(filter):
            method, condition = self._among(filter), None
        elif filter is not None:
            condition = dict(filter)
        copies = self._duplicate_groups() if collapse_duplicates else None
        if grouped or copies is not None:
            found = self._distinct(
                method, vector, int(k), condition, exclude, field if grouped else None, copies
            )
        else:
            found = method(vector, int(k), condition, exclude)
        return self._hits(found, vector if grouped else None, field)

    def _whole_products(self, keys: list[str], field: str) -> list[str]:
        rows = self._backend.fetch(keys)
        ids = sorted({str(row["metadata"][field]) for row, _ in rows.values() if field in row["metadata"]})
        return sorted(set(keys) | set(self._backend.keys_with_field(field, ids)))

    def _approximate(
        self, vector: np.ndarray, k: int, condition: Mapping[str, Any] | None, exclude: list[str]
    ) -> list[Neighbour]:
        return self._backend.top_k(vector, k, condition, exclude, self.params.ef)

    def _exact(
        self, vector: np.ndarray, k: int, condition: Mapping[str, Any] | None, exclude: list[str]
    ) -> list[Neighbour]:
        keys, distances = self._exact_many(vector[None, :], k, condition, set(exclude))
        return [Neighbour(key, float(d)) for key, d in zip(keys[0], distances[0]) if key is not None]

    def _exact_many(
        self,
        queries: np.ndarray,
        k: int,
        condition: Mapping[str, Any] | None,
        exclude: set[str],
        keep: Callable[[str, dict[str, Any]], bool] | None = None,
    ) -> tuple[list[list[str | None]], np.ndarray]:
        """Exact top-k of several queries in one pass over the stored vectors, in batches."""
        best_d = np.full((len(queries), 0), np.inf, np.float32)
        best_i = np.zeros((len(queries), 0), np.int64)
        names: list[str] = []
        for batch in self._backend.iterate(condition, vectors=True, batch=EXACT_BATCH):
            rows = [
                (key, vector)
                for key, row, vector in batch
                if key not in exclude and (keep is None or keep(key, row))
            ]
            if not rows:
                continue
            ids = np.arange(len(names), len(names) + len(rows))
            names += [key for key, _ in rows]
            d = squared_distances(queries, np.stack([v for _, v in rows]))
            all_d = np.concatenate([best_d, d], axis=1)
            all_i = np.concatenate([best_i, np.broadcast_to(ids, d.shape)], axis=1)
            if all_d.shape[1] > k:
                part = np.argpartition(all_d, k - 1, axis=1)[:, :k]
                all_d, all_i = (
                    np.take_along_axis(all_d, part, axis=1),
                    np.take_along_axis(all_i, part, axis=1),
                )
            best_d, best_i = all_d, all_i
        order = np.lexsort((best_i, best_d), axis=1) if best_d.size else np.zeros(best_d.shape, np.int64)
        best_d, best_i = np.take_along_axis(best_d, order, axis=1), np.take_along_axis(best_i, order, axis=1)
        return [[names[i] for i in row] for row in best_i.tolist()], best_d

    def _among(self, predicate: Callable[[Item], bool]) -> Method:
        """A callable filter: exact search among the items it keeps (every item is read)."""

        def method(vector: np.ndarray, k: int, condition: Any, exclude: list[str]) -> list[Neighbour]:
            keys, distances = self._exact_many(
                vector[None, :], k, None, set(exclude), lambda key, row: bool(predicate(_item(key, row)))
            )
            return [Neighbour(key, float(d)) for key, d in zip(keys[0], distances[0]) if key is not None]

        return method

    def _distinct(
        self,
        method: Method,
        vector: np.ndarray,
        k: int,
        condition: Mapping[str, Any] | None,
        exclude: list[str],
        field: str | None,
        copies: Mapping[str, int] | None = None,
    ) -> list[Neighbour]:
        """k hits, one per group: of near-duplicates (``copies``, key -> group), then of products
        (``field``); more asked for until enough are in hand. As on a local catalog, the groups
        of the excluded items (a "more like this" query) count as shown."""
        wanted = 2 * k + COLLAPSE_EXTRA
        while True:
            found = method(vector, wanted, condition, exclude)
            rows = self._backend.fetch([n.key for n in found]) if field is not None else {}
            shown_copies = {copies[key] for key in exclude if key in copies} if copies else set()
            seen: set[str] = set()
            kept: list[Neighbour] = []
            for neighbour in found:
                if copies is not None and neighbour.key in copies:
                    if copies[neighbour.key] in shown_copies:
                        continue
                    shown_copies.add(copies[neighbour.key])
                if field is not None:
                    metadata = rows[neighbour.key][0]["metadata"] if neighbour.key in rows else {}
                    product = str(metadata[field]) if field in metadata else "\x00" + neighbour.key
                    if product in seen:
                        continue
                    seen.add(product)
                kept.append(neighbour)
            if len(kept) >= k or len(found) < wanted or wanted >= 16_384:
                return kept[:k]
            wanted = min(wanted * 4, 16_384)

    def _hits(self, found: list[Neighbour], query: np.ndarray | None, field: str | None) -> list[Hit]:
        rows = self._backend.fetch([n.key for n in found])
        photos: dict[str, tuple[str, ...]] = {}
        if query is not None and field is not None:
            for neighbour in found:
                metadata = rows[neighbour.key][0]["metadata"] if neighbour.key in rows else {}
                if field not in metadata:
                    continue
                others = [
                    x
                    for x in self._backend.keys_with_field(field, [str(metadata[field])])
                    if x != neighbour.key
                ]
                if others:
                    stored = self._backend.fetch(others, vectors=True)
                    names = list(stored)
                    distances = squared_distances(query[None, :], np.stack([stored[x][1] for x in names]))[0]
                    photos[neighbour.key] = tuple(names[i] for i in np.lexsort((names, distances)))
        hits: list[Hit] = []
        for neighbour in found:
            if neighbour.key not in rows:
                continue  # removed between the search and the fetch
            row = rows[neighbour.key][0]
            d = max(neighbour.distance, 0.0)
            product = str(row["metadata"][field]) if field is not None and field in row["metadata"] else None
            hits.append(
                Hit(
                    len(hits) + 1, neighbour.key, row["path"], d, 1.0 - d / 2.0, dict(row["metadata"]),
                    product, photos.get(neighbour.key, ()),
                )
            )  # fmt: skip
        return hits

    # -- checking -------------------------------------------------------------------------------

    def check(self, k: int = 5, sample: int = 1000, seed: int = 0) -> CheckReport:
        """recall@k of the engine's index against exact KNN over the stored vectors, queried with
        the catalog's own items (each its own top hit, as on a local catalog)."""
        if sample < 1 or k < 1:
            raise BadArgumentError(f"check needs k >= 1 and sample >= 1, got k={k}, sample={sample}")
        keys = sorted(item.key for item in self.iter_items())
        if not keys:
            raise CatalogError(f"{self.path} is empty: index some images first.")
        rng = np.random.default_rng(seed)
        picks = sorted(rng.choice(len(keys), size=min(sample, len(keys)), replace=False).tolist())
        chosen = [keys[i] for i in picks]
        queries = self.vectors(chosen)
        kk = min(k, len(keys))
        exact_keys, _ = self._exact_many(queries, kk, None, set())
        approx_keys = [[n.key for n in row] for row in self._backend.top_k_many(queries, kk, self.params.ef)]
        number = {key: i for i, key in enumerate(keys)}

        def labels(rows: Sequence[Sequence[str | None]]) -> np.ndarray:
            out = np.full((len(rows), kk), -1, np.int64)
            for r, row in enumerate(rows):
                ids = [number.get(key, -1) for key in row if key is not None][:kk]
                out[r, : len(ids)] = ids
            return out

        recall = recall_at_k(labels(approx_keys), labels(exact_keys), kk)
        params = self.params
        return CheckReport(kk, len(chosen), recall, len(keys), params.ef, params.M, params.ef_construction)

    def verify(self) -> list[str]:
        """Stored vectors that are not finite unit vectors of the catalog's dimension."""
        problems = []
        for batch in self._backend.iterate(vectors=True, batch=EXACT_BATCH):
            for key, _, vector in batch:
                if vector.shape != (self.dim,) or not abs(float(np.linalg.norm(vector)) - 1.0) < 1e-3:
                    problems.append(f"{key!r}: the stored vector is not a unit vector of {self.dim} values")
        return problems

    def reduce(self, dim: int | None, **options: Any) -> None:
        raise CatalogError(f"PCA reduction is not available on a Milvus catalog ({self.path})")


def _item(key: str, row: Mapping[str, Any]) -> Item:
    return Item(NO_LABEL, key, row["path"], row["size"], row["mtime_ns"], dict(row["metadata"]))


def _check_metadata(new: Sequence[NewItem]) -> None:
    """The gate every write passes: metadata that JSON cannot hold finitely is refused, naming the
    item and field, before anything reaches the server."""
    for item in new:
        if bad := bad_field(item.metadata or {}):
            field, reason = bad
            raise BadArgumentError(
                f"item {item.key!r}: metadata field {field[:60]!r} cannot be stored ({reason}); "
                "nothing of the batch was written"
            )


jobs.register("create_remote", create)
jobs.register("open_remote", open_remote)
jobs.register("remote_exists", exists)
