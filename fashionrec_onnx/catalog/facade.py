"""`Catalog`: the public face of a catalog directory. It opens and creates catalogs, loads the
model when an image must be embedded, and hands every job to the module that owns it."""

from __future__ import annotations

import base64
import contextlib
import fcntl
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..embedder import Embedder
from ..errors import BadArgumentError, CatalogError, ModelError, ModelMismatchError, UnknownKeyError
from ..images import Box, Source, check_box
from ..index import DEFAULT_EF, DEFAULT_EF_CONSTRUCTION, DEFAULT_M, HnswParams
from ..model import ModelInfo, read_model_info
from ..reduce import PCA
from . import duplicates as near_duplicates
from . import indexing, maintenance, oracle
from . import search as planner
from .columns import Filter, callable_mask
from .core import LOCK_NAME, CatalogCore, locked_open
from .duplicates import NEIGHBOURS, DuplicateReport
from .indexing import IndexReport
from .maintenance import CheckReport
from .migrate import migrate_v1, needs_migration
from .store import DB_NAME, SCHEMA_VERSION, Item, NewItem, Store
from .vectors import VectorFile, file_name

if TYPE_CHECKING:
    from ..vector_transfer import ExportReport, ImportReport

log = logging.getLogger(__name__)

CATALOG_FORMAT = "2"
ModelArg = str | os.PathLike | Embedder
PROBE_SIMILARITY = 0.999  # a model must embed the probe image as it did when the catalog was made
REDUCE_AFTER = 20_000  # a planned PCA is fitted once the catalog holds this many items
COLLAPSE_EXTRA = 10  # a collapsed search first asks for 2k + this many hits


@dataclass(frozen=True)
class Hit:
    """One search result. ``distance`` is squared L2; on unit vectors ``similarity = 1 - d/2``."""

    rank: int
    key: str
    path: str | None
    distance: float
    similarity: float
    metadata: dict[str, Any]


@dataclass(frozen=True)
class _KeyQuery:
    """A query that can only name a stored item, never a file."""

    key: str


def _shown(text: str) -> str:
    """A caller's string in a message: quoted, and cut when it is long."""
    return repr(text) if len(text) <= 80 else f"{text[:60]!r}… ({len(text)} characters)"


def _is_vector(value: object) -> bool:
    return isinstance(value, np.ndarray) and value.ndim == 1 and value.dtype.kind == "f"


def _unit(vector: np.ndarray, dim: int) -> np.ndarray:
    vector = np.asarray(vector, dtype=np.float32).reshape(-1)
    if vector.shape != (dim,):
        raise CatalogError(f"a vector must have {dim} values, got {vector.shape[0]}")
    norm = float(np.linalg.norm(vector))
    if not np.isfinite(norm) or norm == 0:
        raise CatalogError(
            "the vector is zero or holds NaN or infinite values; it has no direction to search or store"
        )
    return vector / norm


def _probe_image() -> np.ndarray:
    """A fixed picture (colour gradients) that every model of the contract can embed."""
    y, x = np.mgrid[0:96, 0:96].astype(np.float32) / 95.0
    return (np.stack([x, y, (x + y) / 2], axis=-1) * 255).astype(np.uint8)


_Ranked = tuple[np.ndarray, np.ndarray]
_Method = Callable[[CatalogCore, np.ndarray, int, np.ndarray, "np.ndarray | None"], _Ranked]


def _exact(
    core: CatalogCore, vector: np.ndarray, k: int, exclude: np.ndarray, allowed: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """The oracle with the planner's signature: exact KNN among the allowed live items."""
    mask = core.live_mask() if allowed is None else allowed
    if allowed is None and len(exclude):
        mask = mask.copy()
        mask[exclude] = False
    labels, distances = oracle.exact_topk(core.vectors, core.rows, mask, vector, k)
    return labels[0], distances[0]


@contextlib.contextmanager
def _exclusive(root: Path) -> Iterator[None]:
    """The catalog's cross-process write lock, for creating and upgrading."""
    fd = locked_open(root / LOCK_NAME)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class Catalog:
    """Create with `Catalog.create`, open with `Catalog.open`; use as a context manager."""

    def __init__(
        self, core: CatalogCore, model_path: Path, embedder: Embedder | None, threads: int | None
    ) -> None:
        self._core = core
        self.path = core.root
        self.model_path = model_path
        self._embedder = embedder
        self._embedder_lock = threading.Lock()
        self._threads = threads
        self._closed = False
        self._groups: tuple[int, np.ndarray] | None = None  # (generation, label -> duplicate group)
        self._groups_lock = threading.Lock()

    @property
    def info(self) -> ModelInfo:
        return self._core.info

    @property
    def dim(self) -> int:
        return self._core.dim

    @property
    def params(self) -> HnswParams:
        return self._core.params

    @property
    def readonly(self) -> bool:
        return self._core.readonly

    # -- creating and opening ---------------------------------------------------------------------

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
        reduce_to: int | None = None,
    ) -> Catalog:
        """A new, empty catalog bound to ``model`` (its fingerprint is recorded).

        ``vector_dtype="float16"`` halves the stored vectors (the graph stays float32).
        ``reduce_to=256`` plans a PCA graph for a large catalog: it is fitted on the first
        20,000 items as soon as they are in, and every later item goes into the small graph
        (`reduce` does the same for an existing catalog). Creation is
        atomic: a catalog appears whole, bound to exactly one model, even when two processes
        create it at once (the second then opens it, and gets `ModelMismatchError` if its model
        differs).
        """
        root = Path(path).expanduser()
        params = HnswParams(M, ef_construction, ef)
        if vector_dtype not in ("float32", "float16"):
            raise CatalogError(f"vector_dtype must be float32 or float16, not {vector_dtype!r}")
        model_path, info = cls._model_identity(model)
        root.mkdir(parents=True, exist_ok=True)
        with _exclusive(root):
            if (root / DB_NAME).exists():
                if not exist_ok:
                    raise CatalogError(
                        f"a catalog already exists at {root}; open it with Catalog.open (or pass "
                        "exist_ok=True, or use Catalog.open_or_create)."
                    )
            else:
                cls._write_new(root, info, model_path, params, vector_dtype, reduce_to)
        return cls.open(root, model, threads=threads)

    @staticmethod
    def _write_new(
        root: Path,
        info: ModelInfo,
        model_path: Path,
        params: HnswParams,
        vector_dtype: str,
        reduce_to: int | None,
    ) -> None:
        """The database is written under a temporary name and renamed last: it exists only whole."""
        name = file_name(vector_dtype)
        VectorFile.create(root / name, info.dim, vector_dtype).close()
        temporary = root / f"{DB_NAME}.creating-{os.getpid()}"
        temporary.unlink(missing_ok=True)
        store = Store(temporary, create=True)
        try:
            settings = {f"model.{k}": v for k, v in info.to_metadata().items()}
            settings.update(
                {
                    "schema_version": str(SCHEMA_VERSION),
                    "catalog_format": CATALOG_FORMAT,
                    "model_path": str(model_path),
                    "hnsw.M": str(params.M),
                    "hnsw.ef_construction": str(params.ef_construction),
                    "hnsw.ef": str(params.ef),
                    "vector_dtype": vector_dtype,
                    "vectors.file": name,
                    "vectors.rows": "0",
                    "items.count": "0",
                    "changes.since": "0",
                    "reduction.planned": str(reduce_to or ""),
                }
            )
            store.set_settings(settings)
            store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            store.close()
        for suffix in ("-wal", "-shm"):
            Path(f"{temporary}{suffix}").unlink(missing_ok=True)
        os.replace(temporary, root / DB_NAME)

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        model: ModelArg | None = None,
        *,
        readonly: bool = False,
        rebuild: bool = False,
        threads: int | None = None,
        load_graph: bool = True,
    ) -> Catalog:
        """Open an existing catalog; ``model`` must be the one it was built with.

        ``rebuild=True`` recreates the HNSW graph (and a lost PCA) from the stored vectors: the
        recovery for a missing or corrupt graph or PCA file. A catalog in a directory this process
        cannot write is opened read-only (searches work, writes say why they cannot).
        ``load_graph=False`` opens for maintenance (`reduce`) without reading graph or PCA files.
        """
        root = Path(path).expanduser()
        database = root / DB_NAME
        if not database.exists():
            raise CatalogError(
                f"no catalog at {root}; create one with `fashionrec index IMAGES --catalog {root}`."
            )
        writable = os.access(root, os.W_OK) and os.access(database, os.W_OK)
        if not readonly and not writable:
            log.warning(
                "%s is not writable by this process: opened read-only (searches work, changes do not)", root
            )
            readonly = True
        if needs_migration(database):
            if not writable:
                raise CatalogError(
                    f"{root} was written by fashionrec-onnx 0.1.0 and must be upgraded once, which needs "
                    "write "
                    f"access: run `fashionrec info --catalog {root}` as a user who can write it."
                )
            with _exclusive(root):
                migrate_v1(root, database)
        store = Store(database, readonly=readonly)
        try:
            core = CatalogCore(root, store, readonly=readonly)
            model_path = Path(store.get_setting("model_path", "") or "")
            embedder = None
            if model is not None:
                model_path, info = cls._model_identity(model)
                if info.fingerprint != core.info.fingerprint:
                    raise ModelMismatchError(
                        f"{root} was built with model {core.info.fingerprint} ({core.info.weights}, "
                        f"{core.info.precision}) but {model_path} is {info.fingerprint} ({info.weights}, "
                        f"{info.precision}). Open it without a model to use the recorded one, or index into "
                        "a new catalog."
                    )
                embedder = model if isinstance(model, Embedder) else None
            catalog = cls(core, model_path, embedder, threads)
            if load_graph:
                cls._start(core, rebuild)
        except BaseException:
            store.close()
            raise
        return catalog

    @staticmethod
    def _start(core: CatalogCore, rebuild: bool) -> None:
        try:
            core.load_reduction()
        except CatalogError:
            if not rebuild:
                raise
            log.warning("refitting the lost PCA of %s from the stored vectors", core.root)
            dim = int(str(core.reduction_file).split("-")[1])
            whiten = "whitened" in str(core.reduction_file)
            with core.writing():
                pca, name = maintenance.fit_reduction(core, dim, whiten, 50_000, 0)
                core.store.set_settings({"reduction.file": name}, bump=True)
                core.reduction_file, core.reduction = name, pca
                core.generation = core.store.generation
        if core.start_graph(rebuild) and not core.readonly:
            core.save()

    @classmethod
    def open_or_create(cls, path: str | os.PathLike[str], model: ModelArg | None, **params: Any) -> Catalog:
        """What `fashionrec index` does: reuse the catalog if there is one, else make it."""
        if (Path(path).expanduser() / DB_NAME).exists():
            return cls.open(path, model, threads=params.get("threads"))
        if model is None:
            raise CatalogError(f"no catalog at {path} yet: pass the model to create it (--model).")
        params = {name: value for name, value in params.items() if value is not None}
        return cls.create(path, model, exist_ok=True, **params)

    @staticmethod
    def _model_identity(model: ModelArg) -> tuple[Path, ModelInfo]:
        if isinstance(model, Embedder):
            return model.model_path.resolve(), model.info
        model_path = Path(model).expanduser().resolve()
        return model_path, read_model_info(model_path)

    @property
    def embedder(self) -> Embedder:
        """The model, loaded on first use (searches by vector or key never need it) and checked
        against what the catalog recorded: its fingerprint, and how it embeds a probe image."""
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
            if not getattr(self, "_probed", False):
                self._check_probe(self._embedder)
                self._probed = True
            return self._embedder

    def _check_probe(self, embedder: Embedder) -> None:
        """Metadata can be copied onto other weights: what the model computes must match too."""
        vector = embedder.embed_one(_probe_image())
        recorded = self._core.store.get_setting("model.probe")
        if recorded is None:
            if not np.all(np.isfinite(vector)):
                raise ModelMismatchError(
                    f"{embedder.model_path} gives NaN embeddings; it cannot index into {self.path}."
                )
            if not self.readonly:
                self._core.store.set_settings(
                    {"model.probe": base64.b64encode(vector.astype("<f4").tobytes()).decode()}
                )
            return
        expected = np.frombuffer(base64.b64decode(recorded), "<f4")
        similarity = (
            float(vector @ expected) if len(expected) == len(vector) and np.all(np.isfinite(vector)) else -1.0
        )
        if not similarity >= PROBE_SIMILARITY:
            raise ModelMismatchError(
                f"{embedder.model_path} carries the metadata of the model {self.path} was built with, "
                f"but its weights compute other embeddings (probe similarity {similarity:.4f}); pass "
                "the original model with --model or index into a new catalog."
            )

    def save(self) -> None:
        """Write the graph atomically under a new name, then record it; old files are removed."""
        self._core.save()

    def close(self) -> None:
        """Save the graph if it changed, release files. The catalog is consistent without it."""
        if self._closed:
            return
        self._closed = True
        self._core.close()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- contents -----------------------------------------------------------------------------------

    def __len__(self) -> int:
        self._core.sync()
        return self._core.count

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._core.store.item_by_key(key) is not None

    def iter_items(self) -> Iterator[Item]:
        """Every item, read from the database in batches (for catalogs too large for a list)."""
        return self._core.store.iter_items()

    def keys(self) -> list[str]:
        return [item.key for item in self.iter_items()]

    def items(self) -> list[Item]:
        return list(self.iter_items())

    def get(self, key: str) -> Item:
        item = self._core.store.item_by_key(key)
        if item is None:
            raise UnknownKeyError(f"no item with key {key!r} in {self.path}.")
        return item

    def get_many(self, keys: Iterable[str]) -> dict[str, Item]:
        """The items of those keys the catalog holds (unknown keys are simply absent)."""
        return self._core.store.items_by_key(list(keys))

    def vector(self, key: str) -> np.ndarray:
        """The stored embedding of an item."""
        return self._core.vectors.read([self.get(key).label])[0]

    def vectors(self, keys: Iterable[str]) -> np.ndarray:
        """Stored embeddings of several items, in the order of ``keys``."""
        keys = list(keys)
        found = self._core.store.items_by_key(keys)
        missing = [key for key in keys if key not in found]
        if missing:
            raise UnknownKeyError(f"no item with key {missing[0]!r} in {self.path} ({len(missing)} unknown).")
        return self._core.vectors.read([found[key].label for key in keys])

    def image_path(self, key: str) -> Path | None:
        path = self.get(key).path
        return Path(path) if path else None

    def categories(self, field: str = "category") -> list[str]:
        """Distinct values of a metadata field, for filter menus."""
        self._core.sync()
        with self._core.rw.read():
            return sorted({value for _, value in self._core.store.field_values(field)})

    @property
    def graph_dim(self) -> int:
        """Dimension of the HNSW graph: the model's, or the PCA's when the catalog is reduced."""
        return self._core.graph_dim

    @property
    def reduction(self) -> PCA | None:
        return self._core.reduction

    def set_ef(self, ef: int) -> None:
        """Trade speed for recall at search time; persisted (hnswlib itself forgets ef)."""
        HnswParams(self.params.M, self.params.ef_construction, ef)  # validates
        self._core.set_settings({"hnsw.ef": str(ef)})

    def summary(self) -> dict[str, Any]:
        core = self._core
        core.sync()
        graph_file = core.graph.file()
        return {
            "path": str(self.path),
            "items": core.count,
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
            "graph_slots": core.graph.index.slots if core.graph.index is not None else 0,
            "reduction": (
                f"PCA {self.dim}->{core.reduction.dim}{' whitened' if core.reduction.whiten else ''}, "
                f"{core.reduction.explained_variance_ratio:.1%} of variance"
                if core.reduction is not None
                else None
            ),
            "vector_dtype": core.vectors.dtype.name,
            "vector_file": core.vectors.path.name,
            "vector_rows": core.rows,
            "disk_bytes": sum(p.stat().st_size for p in self.path.iterdir() if p.is_file()),
        }

    # -- writing --------------------------------------------------------------------------------------

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
        self._core.write([NewItem(key, vector, str(path) if path else None, metadata=dict(metadata or {}))])

    def add_many(
        self,
        keys: Iterable[str],
        vectors: np.ndarray,
        *,
        paths: Iterable[str | None] | None = None,
        metadata: Iterable[Mapping[str, Any] | None] | None = None,
        sizes: Iterable[int | None] | None = None,
        mtimes_ns: Iterable[int | None] | None = None,
    ) -> int:
        """Add ready vectors in one transaction (for vectors computed elsewhere); existing keys
        are replaced. Unit vectors are stored exactly as given, others normalised; a zero, NaN or
        wrong-width vector fails the batch. ``sizes`` and ``mtimes_ns`` (of the image files) let
        a later `index_folder` of the same files know they are unchanged."""
        keys = list(keys)
        vectors = np.asarray(vectors, np.float32)
        if vectors.shape != (len(keys), self.dim):
            raise CatalogError(f"expected vectors of shape ({len(keys)}, {self.dim}), got {vectors.shape}")
        if len(set(keys)) != len(keys):
            raise CatalogError("add_many got the same key twice in one batch; keys must be unique")
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        off = ~(np.abs(norms - 1.0) <= 1e-6)  # unit already: kept bit for bit (exact round trips)
        if off.any():
            with np.errstate(invalid="ignore", divide="ignore"):
                vectors = np.where(off, vectors / norms, vectors)
        columns = [
            list(values) if values is not None else [None] * len(keys)
            for values in (paths, metadata, sizes, mtimes_ns)
        ]
        new = [
            NewItem(k, v, p, s, t, metadata=dict(m or {}))
            for k, v, p, m, s, t in zip(keys, vectors, *columns)
        ]
        added = len(self._core.write(new)[0])
        self._reduce_when_planned()
        return added

    def _reduce_when_planned(self) -> None:
        """Fit the planned PCA once enough items are in (see `create`'s ``reduce_to``)."""
        planned = self._core.store.get_setting("reduction.planned") or ""
        if planned and self._core.reduction is None and self._core.count >= REDUCE_AFTER:
            log.info(
                "%s holds %d items: fitting the planned PCA to %s dimensions",
                self.path,
                self._core.count,
                planned,
            )
            self.reduce(int(planned))

    def remove(self, *keys: str) -> int:
        """Remove items by key; unknown or already removed keys are ignored. Returns how many went."""
        return len(self._core.write([], keys)[1])

    def rebuild(self) -> None:
        """Recreate the HNSW graph from the stored vectors (no re-embedding)."""
        with self._core.writing():
            self._core.fresh_graph()
        self._core.save()

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
        return indexing.index_folder(
            self,
            folder,
            metadata=metadata,
            prune=prune,
            progress=progress,
            batch_size=batch_size,
            key_prefix=key_prefix,
        )

    def import_vectors(self, path: str | os.PathLike[str], *, progress: bool = False) -> ImportReport:
        """Add the vectors of Parquet files written by `fashionrec embed` or `export_vectors`
        (see `vector_transfer.import_vectors`): incremental, one transaction a batch."""
        from ..vector_transfer import import_vectors

        return import_vectors(self, path, progress=progress)

    def export_vectors(self, path: str | os.PathLike[str]) -> ExportReport:
        """Write every item and vector in the Parquet layout `import_vectors` reads."""
        from ..vector_transfer import export_vectors

        return export_vectors(self, path)

    # -- searching ------------------------------------------------------------------------------------

    def _query_vector(self, query: Source | str | _KeyQuery) -> tuple[np.ndarray, int | None]:
        """The vector to search with, and the label to leave out ("more like this")."""
        key = query.key if isinstance(query, _KeyQuery) else query if isinstance(query, str) else None
        if key is not None:
            item = self._core.store.item_by_key(key) if len(key) <= 4096 else None
            if item is not None:
                return self._core.vectors.read([item.label])[0], item.label
            if isinstance(query, _KeyQuery):
                raise UnknownKeyError(f"no item with key {_shown(key)} in {self.path}.")
        if _is_vector(query):
            return _unit(query, self.dim), None  # type: ignore[arg-type]
        if isinstance(query, str):
            try:
                exists = Path(query).expanduser().exists()
            except (OSError, ValueError):
                exists = False
            if not exists:
                raise CatalogError(f"{_shown(query)} is neither a key in {self.path} nor an image file.")
        return self.embedder.embed_one(query), None  # type: ignore[arg-type]

    def _embed_region(self, query: Source | str | _KeyQuery, box: Box) -> np.ndarray:
        """A box crops an image: a key or a vector has no pixels to crop."""
        check_box(box)
        if isinstance(query, _KeyQuery) or _is_vector(query):
            raise BadArgumentError("a box crops an image; it cannot apply to a catalog key or a vector")
        if isinstance(query, str) and query in self and not Path(query).expanduser().is_file():
            raise BadArgumentError(
                f"{query[:200]!r} is a key in {self.path}; a box crops an image, so pass an image file"
            )
        return self.embedder.embed_one(query, box=box)  # type: ignore[arg-type]

    @contextlib.contextmanager
    def _searching(
        self, query: Source | str | _KeyQuery, k: int, filter: Filter | None, box: Box | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
        """What every search starts with: the query vector, the labels to leave out and the
        filter's mask, all read from one consistent state (other processes' writes taken in)."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise BadArgumentError(f"k must be a whole number >= 1, got {k!r}")
        core = self._core
        embedded = None
        if box is not None:
            embedded = self._embed_region(query, box)
        elif not isinstance(query, (str, _KeyQuery)) and not _is_vector(query):
            embedded = self.embedder.embed_one(query)  # the slow part, outside every lock
        while True:
            core.sync()
            with core.rw.read(), core.store.snapshot():
                if core.store.state()[0] != core.generation:
                    continue  # a write landed between the catch-up and the snapshot
                vector, exclude = (embedded, None) if embedded is not None else self._query_vector(query)
                excluded = np.asarray([] if exclude is None else [exclude], np.int64)
                allowed = None
                if filter is not None:
                    live = core.live_mask()
                    if isinstance(filter, Mapping):
                        allowed = core.columns.mask(filter, live)
                    else:
                        allowed = callable_mask(filter, core.store, len(live)) & live
                    allowed[excluded[excluded < len(allowed)]] = False
                yield vector, excluded, allowed
                return

    def _hits(self, labels: np.ndarray, distances: np.ndarray) -> list[Hit]:
        items = self._core.store.items_by_label(labels.tolist())
        hits: list[Hit] = []
        for label, distance in zip(labels.tolist(), distances.tolist()):
            item = items.get(int(label))
            if item is None:
                continue
            d = max(float(distance), 0.0)
            hits.append(Hit(len(hits) + 1, item.key, item.path, d, 1.0 - d / 2.0, dict(item.metadata)))
        return hits

    def search(
        self,
        query: Source | str,
        k: int = 5,
        filter: Filter | None = None,
        *,
        box: Box | None = None,
        collapse_duplicates: bool = False,
    ) -> list[Hit]:
        """The k most similar items to an image, a vector, or the key of an item in the catalog.

        A key searches "more like this" and leaves the item itself out. ``filter`` is a dict of
        metadata values (a list value means any of them) or a callable taking an `Item`; k hits
        that all match come back when that many exist. ``box = (left, top, right, bottom)``
        searches for a region of the image only (pixels of the upright image).
        ``collapse_duplicates=True`` shows one image per group of near-duplicates (see
        `duplicates`); the groups are found on the first such search after a change.
        """
        return self._answer(planner.search, query, k, filter, box, collapse_duplicates)

    def _answer(
        self,
        method: _Method,
        query: Source | str | _KeyQuery,
        k: int,
        filter: Filter | None,
        box: Box | None,
        collapse_duplicates: bool,
    ) -> list[Hit]:
        """A search answered by ``method`` (the planner or the exact oracle)."""
        with self._searching(query, k, filter, box) as (vector, exclude, allowed):
            if collapse_duplicates:
                labels, distances = self._collapsed(method, vector, int(k), exclude, allowed)
            else:
                labels, distances = method(self._core, vector, int(k), exclude, allowed)
            return self._hits(labels, distances)

    def _collapsed(
        self, method: _Method, vector: np.ndarray, k: int, exclude: np.ndarray, allowed: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """k hits, one per group of near-duplicates: more candidates, the worse copies dropped."""
        group_of = self._group_of()
        wanted = 2 * k + COLLAPSE_EXTRA
        while True:
            labels, distances = method(self._core, vector, wanted, exclude, allowed)
            kept = near_duplicates.collapse(labels, group_of, exclude, k)
            if len(kept) >= k or len(labels) < wanted or wanted >= self._core.count:
                return labels[kept], distances[kept]
            wanted *= 4

    def _group_of(self) -> np.ndarray:
        """Label -> near-duplicate group at the default threshold, found once per catalog state.
        The caller holds the read lock on a caught-up catalog."""
        with self._groups_lock:
            if self._groups is None or self._groups[0] != self._core.generation:
                _, group_of = near_duplicates.find(self._core, None, NEIGHBOURS)
                self._groups = (self._core.generation, group_of)
            return self._groups[1]

    def more_like_this(
        self, key: str, k: int = 5, filter: Filter | None = None, *, collapse_duplicates: bool = False
    ) -> list[Hit]:
        """Items like the one stored under ``key`` (itself left out). Unlike `search`, a string
        here is only ever a key, never a file: the entry point for remote callers."""
        if not isinstance(key, str):
            raise UnknownKeyError(f"no item with key {_shown(str(key))} in {self.path}.")
        return self.search(_KeyQuery(key), k, filter, collapse_duplicates=collapse_duplicates)  # type: ignore[arg-type]

    def duplicates(self, threshold: float | None = None, *, neighbours: int = NEIGHBOURS) -> DuplicateReport:
        """Groups of near-identical images (re-uploads, resized or recompressed copies), found
        through the graph: each item's ``neighbours`` nearest, then the connected components of
        the pairs whose similarity is at least ``threshold``. ``threshold=None`` calibrates it on
        this catalog (see `duplicates`), as `search(..., collapse_duplicates=True)` does."""
        near_duplicates.validated(threshold, neighbours)
        self._core.sync()
        with self._core.rw.read():
            report, group_of = near_duplicates.find(self._core, threshold, neighbours)
            if threshold is None and neighbours == NEIGHBOURS:
                with self._groups_lock:
                    self._groups = (self._core.generation, group_of)
            return report

    def exact_search(
        self,
        query: Source | str,
        k: int = 5,
        filter: Filter | None = None,
        *,
        box: Box | None = None,
        collapse_duplicates: bool = False,
    ) -> list[Hit]:
        """The oracle: exact KNN over every stored vector, read in blocks (see `oracle`)."""
        return self._answer(_exact, query, k, filter, box, collapse_duplicates)

    # -- checking and reshaping -----------------------------------------------------------------------

    def check(self, k: int = 5, sample: int = 1000, seed: int = 0) -> CheckReport:
        """recall@k of searches (HNSW, plus the rerank of a reduced catalog) against exact KNN
        over the full stored vectors, queried with the catalog's own items."""
        if sample < 1 or k < 1:
            raise BadArgumentError(f"check needs k >= 1 and sample >= 1, got k={k}, sample={sample}")
        self._core.sync()
        with self._core.rw.read():
            return maintenance.check(self._core, k, sample, seed)

    def verify(self) -> list[str]:
        """Problems found in the store, the vector file and the graph; empty when consistent."""
        self._core.sync()
        with self._core.rw.read():
            return maintenance.verify(self._core)

    def reduce(
        self, dim: int | None, *, whiten: bool = False, sample: int = 50_000, seed: int = 0
    ) -> PCA | None:
        """Index a PCA projection of the vectors (``dim=None`` goes back to full vectors).

        The PCA is fitted on (a sample of) the catalog's own vectors and saved beside it; queries
        are projected automatically and hits re-ranked with the full vectors.
        """
        core = self._core
        with core.writing():
            if dim is None:
                name, pca = "", None
            else:
                pca, name = maintenance.fit_reduction(core, dim, whiten, sample, seed)
            core.store.set_settings({"reduction.file": name}, bump=True)
            core.generation = core.store.generation
            core.reduction_file, core.reduction = name or None, pca
            for old in self.path.glob("pca-*.npz"):
                if old.name != name:
                    old.unlink(missing_ok=True)
            core.fresh_graph()
        core.save()
        return pca
