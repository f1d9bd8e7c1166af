"""A searchable catalog of product images: a directory holding a SQLite store and an HNSW graph.

The store holds items and their vectors (the truth); the graph is a cache of them, saved at
checkpoints and on close, and reconciled with the store whenever they differ (after a crash, or
after another process wrote). So a crash never loses committed work and never needs re-embedding.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from .embedder import Embedder, Failure
from .errors import CatalogCorruptError, CatalogError, ModelError, ModelMismatchError, UnknownKeyError
from .evaluation import recall_at_k
from .filters import Filter, MetadataIndex, allowed_labels
from .images import Source
from .index import DEFAULT_EF, DEFAULT_EF_CONSTRUCTION, DEFAULT_M, HnswIndex, HnswParams, ReadWriteLock
from .model import ModelInfo, read_model_info
from .reduce import PCA
from .scan import ImageFile, metadata_for, read_metadata, scan_folder
from .store import DB_NAME, Item, NewItem, Store

log = logging.getLogger(__name__)

CATALOG_FORMAT = "1"
LOCK_NAME = ".lock"
GRAPH_PREFIX = "graph-"
GRAPH_SUFFIX = ".hnsw"
CHECKPOINT_SECONDS = 120.0
# A filter matching few items is searched exactly among them (cost grows with the matches); one
# matching many is searched in the graph (cost grows as matches get rarer). The crossover, measured
# at 44,000 and 200,000 items (benchmarks/filtered.py), sits near 36 x sqrt(catalog size).
EXACT_FILTER_FACTOR = 36.0
EXACT_FILTER_MIN = 2_000
RERANK_EXTRA = 20  # extra candidates the reduced graph returns for the full-space rerank
GATHER_ROWS = 256  # rows copied at a time by exact search in a subset: stays in the CPU cache

ModelArg = str | os.PathLike | Embedder


@dataclass(frozen=True)
class Hit:
    """One search result. ``distance`` is squared L2; on unit vectors ``similarity = 1 - d/2``."""

    rank: int
    key: str
    path: str | None
    distance: float
    similarity: float
    metadata: dict[str, Any]


@dataclass
class IndexReport:
    """What `index_folder` did; ``embedded`` counts images that went through the model."""

    scanned: int = 0
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    moved: int = 0  # same file at a new place: path updated, not re-embedded
    removed: int = 0
    metadata_updated: int = 0
    failures: list[Failure] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def embedded(self) -> int:
        return self.added + self.updated


@dataclass(frozen=True)
class CheckReport:
    """Recall of the HNSW graph against exact search, on a sample of the catalog's own items."""

    k: int
    queries: int
    recall: float
    items: int
    ef: int
    M: int
    ef_construction: int
    reduced_dim: int | None = None
    recall_reduced: float | None = None  # graph vs exact search in the reduced space


def _unit(vector: np.ndarray, dim: int) -> np.ndarray:
    vector = np.asarray(vector, dtype=np.float32).reshape(-1)
    if vector.shape != (dim,):
        raise CatalogError(f"a query vector must have {dim} values, got {vector.shape[0]}")
    norm = float(np.linalg.norm(vector))
    if not np.isfinite(norm):
        raise CatalogError("the query vector holds NaN or infinite values")
    return vector / norm if norm > 0 else vector


@dataclass(frozen=True)
class _KeyQuery:
    """A query that can only name a stored item, never a file."""

    key: str


def _is_vector(value: object) -> bool:
    return isinstance(value, np.ndarray) and value.ndim == 1 and value.dtype.kind == "f"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Catalog:
    """Create with `Catalog.create`, open with `Catalog.open`; use as a context manager."""

    def __init__(self, path: Path, store: Store, *, readonly: bool, threads: int | None) -> None:
        self.path = path
        self._store = store
        self.readonly = readonly
        self._threads = threads
        settings = store.settings()
        try:
            self.info = ModelInfo.from_metadata(
                {k[len("model.") :]: v for k, v in settings.items() if k.startswith("model.")},
                str(store.path),
            )
            self.params = HnswParams(
                int(settings["hnsw.M"]), int(settings["hnsw.ef_construction"]), int(settings["hnsw.ef"])
            )
        except (KeyError, ValueError, ModelError) as exc:
            raise CatalogCorruptError(
                f"{store.path} lacks the catalog settings ({exc}); it was not created by "
                "Catalog.create. Delete it and index again."
            ) from exc
        self.model_path = Path(settings.get("model_path", ""))
        self.dim = self.info.dim
        self._embedder: Embedder | None = None
        self._embedder_lock = threading.Lock()
        self._rw = ReadWriteLock()
        self._lock_file: int | None = None
        self._items: dict[int, Item] = {}
        self._by_key: dict[str, int] = {}
        self._matrix: tuple[np.ndarray, np.ndarray] | None = None
        self._exact_model: Any = None
        self._metadata: MetadataIndex | None = None
        self._generation = -1
        self._graph: HnswIndex
        self._dirty = False
        self._closed = False
        self._reduction_file = settings.get("reduction.file") or None
        self._reduction: PCA | None = PCA.load(path / self._reduction_file) if self._reduction_file else None

    # -- opening --------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        model: ModelArg,
        *,
        M: int = DEFAULT_M,
        ef_construction: int = DEFAULT_EF_CONSTRUCTION,
        ef: int = DEFAULT_EF,
        exist_ok: bool = False,
        threads: int | None = None,
        vector_dtype: str = "float32",
    ) -> Catalog:
        """A new, empty catalog bound to ``model`` (its fingerprint is recorded).

        ``vector_dtype="float16"`` halves the stored vectors (the graph stays float32).
        """
        root = Path(path).expanduser()
        if (root / DB_NAME).exists():
            if exist_ok:
                return cls.open(root, model, threads=threads)
            raise CatalogError(f"a catalog already exists at {root}; open it with Catalog.open.")
        params = HnswParams(M, ef_construction, ef)
        model_path, info = cls._model_identity(model)
        root.mkdir(parents=True, exist_ok=True)
        store = Store(root / DB_NAME, create=True)
        settings = {f"model.{k}": v for k, v in info.to_metadata().items()}
        settings.update(
            {
                "catalog_format": CATALOG_FORMAT,
                "model_path": str(model_path),
                "hnsw.M": str(params.M),
                "hnsw.ef_construction": str(params.ef_construction),
                "hnsw.ef": str(params.ef),
                "vector_dtype": vector_dtype,
            }
        )
        store.set_settings(settings)
        catalog = cls(root, store, readonly=False, threads=threads)
        if isinstance(model, Embedder):
            catalog._embedder = model
        catalog._load_graph(rebuild=True)
        return catalog

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        model: ModelArg | None = None,
        *,
        readonly: bool = False,
        rebuild: bool = False,
        threads: int | None = None,
    ) -> Catalog:
        """Open an existing catalog; ``model`` must be the one it was built with.

        ``rebuild=True`` recreates the HNSW graph from the stored vectors (the recovery for a
        missing or corrupt graph file).
        """
        root = Path(path).expanduser()
        if not (root / DB_NAME).exists():
            raise CatalogError(
                f"no catalog at {root}; create one with `fashionrec index IMAGES --catalog {root}`."
            )
        store = Store(root / DB_NAME, create=False, readonly=readonly)
        catalog = cls(root, store, readonly=readonly, threads=threads)
        try:
            if model is not None:
                model_path, info = cls._model_identity(model)
                if info.fingerprint != catalog.info.fingerprint:
                    raise ModelMismatchError(
                        f"{root} was built with model {catalog.info.fingerprint} "
                        f"({catalog.info.weights}, {catalog.info.precision}) but {model_path} is "
                        f"{info.fingerprint} ({info.weights}, {info.precision}). Open it without a "
                        "model to use the recorded one, or index into a new catalog."
                    )
                if isinstance(model, Embedder):
                    catalog._embedder = model
                else:
                    catalog.model_path = model_path
            catalog._load_graph(rebuild=rebuild)
        except BaseException:
            store.close()
            raise
        return catalog

    @classmethod
    def open_or_create(cls, path: str | os.PathLike[str], model: ModelArg | None, **params: Any) -> Catalog:
        """What `fashionrec index` does: reuse the catalog if there is one, else make it."""
        if (Path(path).expanduser() / DB_NAME).exists():
            return cls.open(path, model, threads=params.get("threads"))
        if model is None:
            raise CatalogError(f"no catalog at {path} yet: pass the model to create it (--model).")
        params = {name: value for name, value in params.items() if value is not None}
        return cls.create(path, model, **params)

    @staticmethod
    def _model_identity(model: ModelArg) -> tuple[Path, ModelInfo]:
        if isinstance(model, Embedder):
            return model.model_path.resolve(), model.info
        model_path = Path(model).expanduser().resolve()
        return model_path, read_model_info(model_path)

    @property
    def embedder(self) -> Embedder:
        """The model, loaded on first use (searches by vector or key never need it)."""
        with self._embedder_lock:
            if self._embedder is None:
                if not self.model_path.is_file():
                    raise ModelError(
                        f"the model this catalog was built with, {self.model_path}, is missing; pass "
                        "the same model explicitly (Catalog.open(path, model=...) or --model)."
                    )
                embedder = Embedder(self.model_path, threads=self._threads)
                if embedder.fingerprint != self.info.fingerprint:
                    embedder.close()
                    raise ModelMismatchError(
                        f"{self.model_path} has changed since {self.path} was built (fingerprint "
                        f"{embedder.fingerprint}, catalog {self.info.fingerprint}); pass the original "
                        "model with --model or index into a new catalog."
                    )
                self._embedder = embedder
            return self._embedder

    # -- the graph cache --------------------------------------------------------------------

    @property
    def graph_dim(self) -> int:
        """Dimension of the HNSW graph: the model's, or the PCA's when the catalog is reduced."""
        return self._reduction.dim if self._reduction is not None else self.dim

    @property
    def reduction(self) -> PCA | None:
        return self._reduction

    def _for_graph(self, vectors: np.ndarray) -> np.ndarray:
        """What the graph indexes: the vectors themselves, or their PCA projection."""
        return vectors if self._reduction is None else self._reduction.transform(vectors)

    def _rerank(self, vector: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Order candidates found in the reduced space by their full-space distance."""
        candidates = labels[labels >= 0]
        found, stored = self._store.vectors(self.dim, candidates.tolist())
        distances = np.maximum(2.0 - 2.0 * (stored @ vector), 0.0).astype(np.float32)
        order = np.argsort(distances, kind="stable")
        return found[order], distances[order]

    def _graph_file(self) -> Path | None:
        name = self._store.get_setting("graph.file")
        return self.path / name if name else None

    def _load_graph(self, rebuild: bool) -> None:
        """Load the saved graph (checked by size and checksum), then reconcile it with the store."""
        self._reload_items()
        if self._graph_from_disk(rebuild) and not self.readonly:
            self.save()

    def _graph_from_disk(self, rebuild: bool = False) -> bool:
        """The saved graph brought up to date, or a fresh one when there is none, when it indexes
        another space (the reduction changed) or when asked; returns whether it was rebuilt."""
        graph_file = self._graph_file()
        if graph_file is not None and self._store.get_setting("graph.dim", str(self.dim)) != str(
            self.graph_dim
        ):
            log.info("the saved graph of %s predates a change of reduction; rebuilding it", self.path)
            rebuild = True
        if rebuild or graph_file is None:
            self._fresh_graph()
            return True
        try:
            self._graph = self._read_graph(graph_file)
        except CatalogCorruptError:
            if self._graph_file() == graph_file:
                raise
            return self._graph_from_disk()  # another process saved a newer graph meanwhile
        self._reconcile()
        return False

    def _read_graph(self, graph_file: Path) -> HnswIndex:
        recovery = f"recreate it from the stored vectors with `fashionrec rebuild --catalog {self.path}`"
        if not graph_file.is_file():
            raise CatalogCorruptError(f"the HNSW graph file {graph_file} is missing; {recovery}.")
        size = int(self._store.get_setting("graph.size", "-1") or -1)
        checksum = self._store.get_setting("graph.sha256")
        if graph_file.stat().st_size != size or _sha256(graph_file) != checksum:
            raise CatalogCorruptError(
                f"the HNSW graph file {graph_file} is truncated or corrupt (size or checksum differs "
                f"from what was saved); {recovery}."
            )
        try:
            return HnswIndex.load(graph_file, self.graph_dim, self.params)
        except (RuntimeError, ValueError, MemoryError) as exc:
            raise CatalogCorruptError(
                f"cannot load the HNSW graph {graph_file} ({exc}); {recovery}."
            ) from exc

    def _reload_items(self) -> None:
        self._generation = self._store.generation
        items = self._store.items()
        self._items = {item.label: item for item in items}
        self._by_key = {item.key: item.label for item in items}
        self._drop_derived()

    def _drop_derived(self) -> None:
        """Forget what is computed from the items (vector matrix, exact model, metadata index)."""
        self._matrix = None
        self._exact_model = None
        self._metadata = None

    def _fresh_graph(self) -> None:
        """A new graph filled from the stored vectors (callers hold the write lock)."""
        self._graph = HnswIndex(self.graph_dim, self.params, capacity=len(self._items))
        self._reconcile()
        self._dirty = True

    def _reconcile(self) -> None:
        """Make the graph hold exactly the stored items (after a crash or another process's write)."""
        in_graph = self._graph.labels()
        missing = sorted(set(self._items) - in_graph)
        stale = in_graph - set(self._items)
        if stale:
            self._graph.delete(stale)
        if missing:
            if len(missing) > 1000:
                log.info("adding %d stored items to the HNSW graph of %s", len(missing), self.path)
            for start in range(0, len(missing), 5000):
                labels, vectors = self._store.vectors(self.dim, missing[start : start + 5000])
                self._graph.add(labels, self._for_graph(vectors))
        if missing or stale:
            self._dirty = True

    def _catch_up(self) -> None:
        """Under the write lock: take in writes made by another process since we last looked
        (items, a new ef, a new or dropped reduction)."""
        if self._store.generation == self._generation:
            return
        self._reload_items()
        settings = self._store.settings()
        reduction_file = settings.get("reduction.file") or None
        ef = int(settings["hnsw.ef"])
        if ef != self.params.ef:
            self._graph.set_ef(ef)
            self.params = self._graph.params
        if reduction_file != self._reduction_file:
            self._reduction_file = reduction_file
            self._reduction = PCA.load(self.path / reduction_file) if reduction_file else None
            self._graph_from_disk()
        else:
            self._reconcile()

    def _sync(self) -> None:
        """Before reading: catch up, taking the write lock only when something changed."""
        if self._store.generation == self._generation:
            return
        with self._rw.write():
            self._catch_up()

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """Exclusive across threads (write lock) and processes (flock on the catalog's .lock)."""
        if self.readonly:
            raise CatalogError(f"{self.path} is open read-only.")
        if self._lock_file is None:
            self._lock_file = os.open(self.path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        with self._rw.write():
            fcntl.flock(self._lock_file, fcntl.LOCK_EX)
            try:
                self._catch_up()
                yield
            finally:
                fcntl.flock(self._lock_file, fcntl.LOCK_UN)

    def save(self) -> None:
        """Write the graph atomically under a new name, then record it; old files are removed."""
        if self.readonly:
            return
        with self._writing():
            if not self._dirty and self._graph_file() is not None:
                return
            generation = self._store.generation
            target = self.path / f"{GRAPH_PREFIX}{generation}{GRAPH_SUFFIX}"
            temporary = target.with_suffix(".tmp")
            self._graph.save(temporary)
            with temporary.open("rb+") as handle:
                os.fsync(handle.fileno())
            os.replace(temporary, target)
            self._store.set_settings(
                {
                    "graph.file": target.name,
                    "graph.size": str(target.stat().st_size),
                    "graph.sha256": _sha256(target),
                    "graph.generation": str(generation),
                    "graph.dim": str(self.graph_dim),
                }
            )
            self._dirty = False
            for old in self.path.glob(f"{GRAPH_PREFIX}*"):
                if old.name != target.name:
                    old.unlink(missing_ok=True)

    def close(self) -> None:
        """Save the graph if it changed, release files. The catalog is consistent without it."""
        if self._closed:
            return
        self._closed = True
        try:
            if not self.readonly and self._dirty:
                self.save()
        finally:
            if self._lock_file is not None:
                os.close(self._lock_file)
                self._lock_file = None
            self._store.close()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- contents ---------------------------------------------------------------------------

    def __len__(self) -> int:
        self._sync()
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        self._sync()
        return key in self._by_key

    def keys(self) -> list[str]:
        self._sync()
        return [item.key for item in self._items.values()]

    def items(self) -> list[Item]:
        self._sync()
        return list(self._items.values())

    def get(self, key: str) -> Item:
        self._sync()
        label = self._by_key.get(key)
        if label is None:
            raise UnknownKeyError(f"no item with key {key!r} in {self.path}.")
        return self._items[label]

    def vector(self, key: str) -> np.ndarray:
        """The stored embedding of an item."""
        label = self.get(key).label
        return self._store.vectors(self.dim, [label])[1][0]

    def image_path(self, key: str) -> Path | None:
        path = self.get(key).path
        return Path(path) if path else None

    def categories(self, field: str = "category") -> list[str]:
        """Distinct values of a metadata field, for filter menus."""
        self._sync()
        return sorted({str(i.metadata[field]) for i in self._items.values() if field in i.metadata})

    def set_ef(self, ef: int) -> None:
        """Trade speed for recall at search time; persisted (hnswlib itself forgets ef)."""
        with self._writing():
            self._graph.set_ef(ef)
            self.params = self._graph.params
            self._store.set_settings({"hnsw.ef": str(ef)}, bump=True)
            self._generation = self._store.generation

    def summary(self) -> dict[str, Any]:
        self._sync()
        graph_file = self._graph_file()
        return {
            "path": str(self.path),
            "items": len(self._items),
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
            "graph_file": str(graph_file) if graph_file else None,
            "graph_dim": self.graph_dim,
            "graph_slots": self._graph.slots,
            "reduction": (
                f"PCA {self.dim}->{self._reduction.dim}{' whitened' if self._reduction.whiten else ''}, "
                f"{self._reduction.explained_variance_ratio:.1%} of variance"
                if self._reduction is not None
                else None
            ),
            "vector_dtype": str(self._store.vector_dtype),
            "disk_bytes": sum(p.stat().st_size for p in self.path.iterdir() if p.is_file()),
        }

    # -- writing ----------------------------------------------------------------------------

    def _apply(self, new: list[NewItem], remove_keys: Iterable[str] = ()) -> tuple[int, int]:
        """One transaction, then the graph; returns (written, removed)."""
        with self._writing():
            result = self._store.write(new, remove_keys)
            self._graph.delete(result.removed)
            if result.added:
                vectors = self._for_graph(np.stack([n.vector for n in new]))
                self._graph.add(np.asarray(result.added, np.int64), vectors, threads=-1)
            for label in result.removed:
                item = self._items.pop(label, None)
                if item is not None:
                    self._by_key.pop(item.key, None)
            for label, n in zip(result.added, new):
                self._items[label] = Item(label, n.key, n.path, n.size, n.mtime_ns, dict(n.metadata or {}))
                self._by_key[n.key] = label
            self._generation = result.generation
            self._drop_derived()
            if result.added or result.removed:
                self._dirty = True
        return len(result.added), len(result.removed)

    def add(
        self,
        key: str,
        image_or_vector: Source,
        *,
        path: str | os.PathLike[str] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        """Add one item (an image, or a ready vector); an existing key is replaced."""
        if _is_vector(image_or_vector):
            vector = _unit(image_or_vector, self.dim)  # type: ignore[arg-type]
        else:
            vector = self.embedder.embed_one(image_or_vector)
            if path is None and isinstance(image_or_vector, (str, os.PathLike)):
                path = Path(image_or_vector).expanduser().resolve()
        self._apply([NewItem(key, vector, str(path) if path else None, metadata=dict(metadata or {}))])

    def add_many(
        self,
        keys: Iterable[str],
        vectors: np.ndarray,
        *,
        paths: Iterable[str | None] | None = None,
        metadata: Iterable[Mapping[str, Any] | None] | None = None,
    ) -> int:
        """Add ready vectors in one transaction (for vectors computed elsewhere)."""
        keys = list(keys)
        vectors = np.asarray(vectors, np.float32)
        if vectors.shape != (len(keys), self.dim):
            raise CatalogError(f"expected vectors of shape ({len(keys)}, {self.dim}), got {vectors.shape}")
        paths_list = list(paths) if paths is not None else [None] * len(keys)
        meta_list = list(metadata) if metadata is not None else [None] * len(keys)
        new = [
            NewItem(k, _unit(v, self.dim), p, metadata=dict(m or {}))
            for k, v, p, m in zip(keys, vectors, paths_list, meta_list)
        ]
        return self._apply(new)[0]

    def remove(self, *keys: str) -> int:
        """Remove items by key; unknown or already removed keys are ignored. Returns how many went."""
        return self._apply([], keys)[1]

    def rebuild(self) -> None:
        """Recreate the HNSW graph from the stored vectors (no re-embedding)."""
        with self._writing():
            self._fresh_graph()
        self.save()

    def index_folder(
        self,
        folder: str | os.PathLike[str],
        *,
        metadata: str | os.PathLike[str] | Mapping[str, Mapping[str, Any]] | None = None,
        prune: bool = False,
        progress: bool = True,
        batch_size: int = 32,
        key_prefix: str = "",
    ) -> IndexReport:
        """Index every image below ``folder``; only new or changed files go through the model.

        Keys are ``key_prefix`` + the path relative to ``folder``: give each folder its own prefix
        to keep several in one catalog. A key already held by an image from elsewhere is refused
        before anything is written, never silently replaced. Each batch is committed on its own,
        so an interrupted run resumes where it stopped. Unreadable files are skipped and listed.
        """
        started = time.perf_counter()
        report = IndexReport()
        table = read_metadata(metadata) if isinstance(metadata, (str, os.PathLike)) else dict(metadata or {})
        root = Path(folder).expanduser().resolve()
        files = list(scan_folder(root, key_prefix))
        report.scanned = len(files)
        self._sync()
        known = {item.key: item for item in self._items.values()}
        self._refuse_foreign_keys(files, known, root)
        todo = [file for file in files if not self._unchanged(known.get(file.key), file)]
        report.unchanged = len(files) - len(todo)
        moved = {file.key: str(file.path) for file in todo if self._moved(known.get(file.key), file)}
        if moved:
            report.moved = self._rewrite(lambda: self._store.update_paths(moved))
            todo = [file for file in todo if file.key not in moved]
        if table:
            report.metadata_updated = self._refresh_metadata(files, todo, known, table)
        last_checkpoint = time.monotonic()
        with tqdm(total=len(todo), unit="img", desc="indexing", disable=not progress or not todo) as bar:
            for result in self.embedder.iter_batches([f.path for f in todo], batch_size=batch_size):
                new = []
                for row, index in enumerate(result.indices):
                    file = todo[int(index)]
                    previous = known.get(file.key)
                    values = metadata_for(file.relative, table) if table else None
                    if values is None:
                        values = previous.metadata if previous else {}
                    new.append(
                        NewItem(
                            file.key,
                            result.vectors[row],
                            str(file.path),
                            file.size,
                            file.mtime_ns,
                            dict(values),
                        )
                    )
                    if previous:
                        report.updated += 1
                    else:
                        report.added += 1
                if new:
                    self._apply(new)
                report.failures.extend(Failure(f.index, todo[f.index].key, f.reason) for f in result.failures)
                bar.update(len(result.indices) + len(result.failures))
                if result.failures:
                    bar.set_postfix(skipped=len(report.failures))
                if time.monotonic() - last_checkpoint > CHECKPOINT_SECONDS:
                    self.save()
                    last_checkpoint = time.monotonic()
        if prune:
            present = {f.key for f in files}
            gone = [
                item.key
                for item in known.values()
                if item.key not in present and item.path and Path(item.path).is_relative_to(root)
            ]
            if gone:
                report.removed = self.remove(*gone)
        self.save()
        report.seconds = time.perf_counter() - started
        if report.failures:
            log.warning("%d file(s) could not be indexed and were skipped", len(report.failures))
        return report

    def _refuse_foreign_keys(self, files: list[ImageFile], known: dict[str, Item], root: Path) -> None:
        """Keys that belong to another image (indexed from another folder, or added by hand), and
        images already indexed under another key (a folder inside one indexed before)."""
        clashes = []
        keys_by_path = {item.path: item.key for item in known.values() if item.path}
        for file in files:
            item = known.get(file.key)
            other_key = keys_by_path.get(str(file.path), file.key)
            if other_key != file.key:
                clashes.append(f"{file.path} is already indexed as {other_key!r}")
            elif item is None or item.path == str(file.path):
                continue
            elif item.path is None or (not Path(item.path).is_relative_to(root) and Path(item.path).exists()):
                clashes.append(f"{file.key!r} is {item.path or 'an item added without a file'}")
        if clashes:
            raise CatalogError(
                f"{len(clashes)} image(s) of {root} clash with what {self.path} holds "
                f"({'; '.join(clashes[:3])}). Nothing was written. Index each folder once, under "
                "its own key prefix (key_prefix=, --key-prefix NAME/), or remove the old items."
            )

    @staticmethod
    def _moved(item: Item | None, file: ImageFile) -> bool:
        """The folder was moved or renamed: the old file is gone, this one has its size and mtime."""
        return (
            item is not None
            and item.path is not None
            and item.size == file.size
            and item.mtime_ns == file.mtime_ns
            and not Path(item.path).exists()
        )

    @staticmethod
    def _unchanged(item: Item | None, file: ImageFile) -> bool:
        return (
            item is not None
            and item.path == str(file.path)
            and item.size == file.size
            and item.mtime_ns == file.mtime_ns
        )

    def _refresh_metadata(
        self,
        files: list[ImageFile],
        todo: list[ImageFile],
        known: dict[str, Item],
        table: Mapping[str, Mapping[str, Any]],
    ) -> int:
        """New metadata for unchanged images is written without re-embedding them."""
        pending = {file.key for file in todo}
        changed: dict[str, dict[str, Any]] = {}
        for file in files:
            values = metadata_for(file.relative, table)  # type: ignore[arg-type]
            item = known.get(file.key)
            if values is None or item is None or file.key in pending:
                continue
            if item.metadata != values:
                changed[file.key] = dict(values)
        if not changed:
            return 0
        return self._rewrite(lambda: self._store.update_metadata(changed))

    def _rewrite(self, change: Callable[[], int]) -> int:
        """Paths or metadata changed in place (no vector touched, so the graph stays as it is)."""
        with self._writing():
            count = change()
            self._reload_items()
        return count

    # -- searching --------------------------------------------------------------------------

    def _query_vector(self, query: Source | str) -> tuple[np.ndarray, int | None]:
        """The vector to search with, and the label to leave out ("more like this")."""
        if isinstance(query, _KeyQuery):
            label = self._by_key.get(query.key)
            if label is None:  # removed by another writer since the caller looked
                raise UnknownKeyError(f"no item with key {query.key[:200]!r} in {self.path}.")
            return self._store.vectors(self.dim, [label])[1][0], label
        if isinstance(query, str) and query in self._by_key:
            label = self._by_key[query]
            return self._store.vectors(self.dim, [label])[1][0], label
        if _is_vector(query):
            return _unit(query, self.dim), None  # type: ignore[arg-type]
        if isinstance(query, str) and not Path(query).expanduser().exists():
            raise CatalogError(f"{query!r} is neither a key in {self.path} nor an image file.")
        return self.embedder.embed_one(query), None

    def _metadata_index(self) -> MetadataIndex:
        index = self._metadata
        if index is None:
            index = self._metadata = MetadataIndex(self._items.values())
        return index

    def _allowed(self, filter: Filter | None, exclude: int | None) -> frozenset[int] | None:
        """Labels a filtered search may return; None when there is no filter."""
        if filter is None:
            return None
        allowed = allowed_labels(filter, self._items, self._metadata_index)
        return allowed - {exclude} if exclude in allowed else allowed

    def _hits(
        self, labels: np.ndarray, distances: np.ndarray, k: int, exclude: int | None = None
    ) -> list[Hit]:
        hits: list[Hit] = []
        for label, distance in zip(labels.tolist(), distances.tolist()):
            item = self._items.get(int(label))
            if item is None or label == exclude or len(hits) == k:
                continue
            d = max(float(distance), 0.0)
            hits.append(Hit(len(hits) + 1, item.key, item.path, d, 1.0 - d / 2.0, dict(item.metadata)))
        return hits

    @contextlib.contextmanager
    def _searching(
        self, query: Source | str, k: int, filter: Filter | None
    ) -> Iterator[tuple[np.ndarray, int | None, frozenset[int] | None]]:
        """What every search starts with: the query vector, the item to leave out, the labels a
        filter allows, all read under the read lock once other processes' writes are taken in."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self._sync()
        vector, exclude = self._query_vector(query)
        with self._rw.read():
            yield vector, exclude, self._allowed(filter, exclude)

    def search(self, query: Source | str, k: int = 5, filter: Filter | None = None) -> list[Hit]:
        """The k most similar items to an image, a vector, or the key of an item in the catalog.

        A key searches "more like this" and leaves the item itself out. ``filter`` is a dict of
        metadata values (a list value means any of them) or a callable taking an `Item`; k hits
        that all match come back when that many exist.
        """
        with self._searching(query, k, filter) as (vector, exclude, allowed):
            if allowed is not None and len(allowed) <= self._exact_filter_limit():
                return self._exact_among(vector, k, allowed)
            wanted = k + 1 if exclude is not None and allowed is None else k  # one more to leave out
            if self._reduction is not None:
                wanted = max(2 * wanted, wanted + RERANK_EXTRA)  # candidates for the full-space rerank
            labels, distances = self._graph.search(
                self._for_graph(vector),
                wanted,
                len(self._items) if allowed is None else len(allowed),
                accept=None if allowed is None else allowed.__contains__,
            )
            labels, distances = labels[0], distances[0]
            if self._reduction is not None:
                labels, distances = self._rerank(vector, labels)
            return self._hits(labels, distances, k, exclude)

    def more_like_this(self, key: str, k: int = 5, filter: Filter | None = None) -> list[Hit]:
        """Items like the one stored under ``key`` (itself left out). Unlike `search`, a string
        here is only ever a key, never a file: the entry point for remote callers."""
        if not isinstance(key, str) or key not in self:
            raise UnknownKeyError(f"no item with key {str(key)[:200]!r} in {self.path}.")
        return self.search(_KeyQuery(key), k, filter)

    def _exact_filter_limit(self) -> int:
        return max(EXACT_FILTER_MIN, int(EXACT_FILTER_FACTOR * math.sqrt(len(self._items))))

    def _exact_among(self, vector: np.ndarray, k: int, allowed: frozenset[int]) -> list[Hit]:
        """Exact top-k within a subset (selective filters): cheap, and never misses a match."""
        if not allowed:
            return []
        labels, rows, matrix = self._rows_of(allowed)
        scores = np.empty(len(rows), np.float32)
        for start in range(0, len(rows), GATHER_ROWS):
            scores[start : start + GATHER_ROWS] = matrix[rows[start : start + GATHER_ROWS]] @ vector
        distances = np.maximum(2.0 - 2.0 * scores, 0.0)
        if len(distances) > k:  # the k best, then only those sorted
            best = np.argpartition(distances, k - 1)[:k]
            order = best[np.argsort(distances[best], kind="stable")]
        else:
            order = np.argsort(distances, kind="stable")
        return self._hits(labels[order], distances[order], k)

    def _rows_of(self, allowed: frozenset[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The allowed labels in order, their rows in the stored-vector matrix, and the matrix."""
        labels = np.sort(np.fromiter(allowed, np.int64, len(allowed)))
        all_labels, matrix = self._vector_matrix()
        return labels, np.searchsorted(all_labels, labels), matrix

    def _vector_matrix(self) -> tuple[np.ndarray, np.ndarray]:
        matrix = self._matrix
        if matrix is None:
            matrix = self._store.vectors(self.dim)
            self._matrix = matrix
        return matrix

    def _exact_neighbors(self) -> tuple[np.ndarray, Any]:
        from sklearn.neighbors import NearestNeighbors

        labels, matrix = self._vector_matrix()
        model = self._exact_model
        if model is None:
            model = NearestNeighbors(algorithm="brute", metric="euclidean").fit(matrix)
            self._exact_model = model
        return labels, model

    def exact_search(self, query: Source | str, k: int = 5, filter: Filter | None = None) -> list[Hit]:
        """The oracle: scikit-learn brute-force KNN over every stored vector."""
        with self._searching(query, k, filter) as (vector, exclude, allowed):
            if allowed is not None:
                if not allowed:
                    return []
                from sklearn.neighbors import NearestNeighbors

                matching, rows, matrix = self._rows_of(allowed)
                subset = matrix[rows]
                model = NearestNeighbors(algorithm="brute", metric="euclidean").fit(subset)
                distances, rows = model.kneighbors(vector[None], n_neighbors=min(k, len(matching)))
                return self._hits(matching[rows[0]], distances[0] ** 2, k)
            if not self._items:
                return []
            labels, model = self._exact_neighbors()
            wanted = min(k + (exclude is not None), len(labels))
            distances, rows = model.kneighbors(vector[None], n_neighbors=wanted)
            return self._hits(labels[rows[0]], distances[0] ** 2, k, exclude)

    def check(self, k: int = 5, sample: int = 1000, seed: int = 0) -> CheckReport:
        """recall@k of searches (HNSW, plus the rerank of a reduced catalog) against exact sklearn
        KNN over the full stored vectors, queried with the catalog's own items."""
        self._sync()
        with self._rw.read():
            labels, matrix = self._vector_matrix()
            if len(labels) == 0:
                raise CatalogError(f"{self.path} is empty: index some images first.")
            rng = np.random.default_rng(seed)
            picks = rng.choice(len(labels), size=min(sample, len(labels)), replace=False)
            queries = matrix[picks]
            kk = min(k, len(labels))
            live = len(self._items)
            exact_labels, model = self._exact_neighbors()
            _, rows = model.kneighbors(queries, n_neighbors=kk)
            exact = exact_labels[rows]
            if self._reduction is None:
                approx, _ = self._graph.search(queries, kk, live)
                return CheckReport(
                    k, len(picks), recall_at_k(approx, exact, kk), len(labels),
                    self.params.ef, self.params.M, self.params.ef_construction,
                )  # fmt: skip
            reduced = self._reduction.transform(queries)
            graph_only, _ = self._graph.search(reduced, kk, live)
            wanted = max(2 * kk, kk + RERANK_EXTRA)
            candidates, _ = self._graph.search(reduced, wanted, live)
            approx = np.stack([self._rerank(q, c)[0][:kk] for q, c in zip(queries, candidates)])
            from sklearn.neighbors import NearestNeighbors

            space = NearestNeighbors(algorithm="brute").fit(self._reduction.transform(matrix))
            _, reduced_rows = space.kneighbors(reduced, n_neighbors=kk)
        return CheckReport(
            k, len(picks), recall_at_k(approx, exact, kk), len(labels), self.params.ef, self.params.M,
            self.params.ef_construction, self._reduction.dim,
            recall_at_k(graph_only, labels[reduced_rows], kk),
        )  # fmt: skip

    def reduce(
        self, dim: int | None, *, whiten: bool = False, sample: int = 50_000, seed: int = 0
    ) -> PCA | None:
        """Index a PCA projection of the vectors (``dim=None`` goes back to full vectors).

        The PCA is fitted on (a sample of) the catalog's own vectors and saved beside it; queries
        are projected automatically and hits re-ranked with the full vectors.
        """
        with self._writing():
            if dim is None:
                self._reduction = None
                self._store.set_settings({"reduction.file": ""}, bump=True)
            else:
                _, matrix = self._vector_matrix()
                if len(matrix) == 0:
                    raise CatalogError(f"{self.path} is empty: index images before reducing.")
                rng = np.random.default_rng(seed)
                picks = rng.choice(len(matrix), size=min(sample, len(matrix)), replace=False)
                pca = PCA.fit(matrix[picks], dim, whiten)
                # A new name per fit: another open catalog notices the change by the name.
                name = f"pca-{dim}{'-whitened' if whiten else ''}-{self._store.generation}.npz"
                pca.save(self.path / name)
                self._store.set_settings({"reduction.file": name}, bump=True)
                self._reduction = pca
            self._reduction_file = self._store.get_setting("reduction.file") or None
            self._generation = self._store.generation
            for old in self.path.glob("pca-*.npz"):
                if old.name != self._reduction_file:
                    old.unlink(missing_ok=True)
            self._fresh_graph()
        self.save()
        return self._reduction

    def verify(self) -> list[str]:
        """Problems found in the store and the graph; empty when the catalog is consistent."""
        problems = [f"{self._store.path}: {p}" for p in self._store.integrity_problems()]
        self._sync()
        with self._rw.read():
            stored = set(self._items)
            if len(stored) != self._store.count():
                problems.append("items in memory differ from the store")
            missing = stored - self._graph.labels()
            if missing:
                problems.append(f"{len(missing)} stored items are missing from the HNSW graph")
            labels, matrix = self._vector_matrix()
            if set(labels.tolist()) != stored:
                problems.append("stored vectors do not match the items")
            norms = np.linalg.norm(matrix, axis=1) if len(matrix) else np.ones(0)
            if len(norms) and not np.all(np.abs(norms[norms > 0] - 1.0) < 1e-3):
                problems.append("some stored vectors are not unit length")
        return problems
