"""`Catalog`: the public face of a catalog directory. It opens and creates catalogs, loads the
model when an image must be embedded, and hands every job to the module that owns it."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..embedder import Embedder
from ..errors import BadArgumentError, CatalogError, DiskFullError, UnknownKeyError
from ..images import Box, Source
from ..model import ModelInfo
from . import jobs, maintenance, opening, products, removals
from . import search as planner
from .columns import Filter
from .core import CatalogCore, read_only_refusal
from .duplicates import NEIGHBOURS, DuplicateReport
from .hnsw import DEFAULT_EF, DEFAULT_EF_CONSTRUCTION, DEFAULT_M, HnswParams
from .kernels import normalised, row_norms
from .location import MilvusLocation, location
from .maintenance import CheckReport
from .opening import ModelArg
from .pca import PCA
from .querying import Hit, KeyQuery, Querier, Queries, Query, exact, is_vector, shown, unit
from .store import DB_NAME, Item, NewItem
from .vectors import read_sound

if TYPE_CHECKING:  # types only: these packages are built on the catalog and register its jobs
    from ..feeds.download import DownloadSettings
    from ..feeds.folders import IndexReport
    from ..feeds.sync import SyncReport
    from ..interchange.vector_transfer import ExportReport, ImportReport
    from ..quality.refine import RefineReport

log = logging.getLogger(__name__)

REDUCE_AFTER = 20_000  # a planned PCA is fitted once the catalog holds this many items


def _whole(value: object, least: int) -> bool:
    """An int (numpy's too, never a bool) of at least ``least``: what a stored count may be."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and bool(value >= least)


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
        self._probed = False
        self._querier = Querier(core, lambda: self.embedder)

    @property
    def info(self) -> ModelInfo:
        return self._core.info

    @property
    def model_fingerprints(self) -> frozenset[str]:
        """Every name of this catalog's model: ``info.fingerprint``, and the fingerprint recorded
        at creation when an earlier scheme computed it (vectors files written then carry that)."""
        return self._core.fingerprints

    @property
    def dim(self) -> int:
        return self._core.dim

    @property
    def params(self) -> HnswParams:
        return self._core.params

    @property
    def readonly(self) -> bool:
        return self._core.readonly

    def require_writable(self, what: str) -> None:
        """Refuse ``what`` (a sync, an index...) before any work when this catalog cannot be
        written, rather than after downloading or embedding everything."""
        if self._core.readonly:
            raise read_only_refusal(self._core.root, what)

    @property
    def generation(self) -> int:
        """The change counter, caught up with other processes: it grows with every write."""
        self._core.sync()
        return self._core.generation

    @property
    def product_field(self) -> str | None:
        """The metadata field naming each item's product (None: every photo stands alone)."""
        self._core.sync()
        return self._core.product_field

    def product_count(self) -> int | None:
        """How many distinct products the catalog holds (None without a product field)."""
        return self._querier.product_count()

    def set_product_field(self, field: str | None) -> None:
        """Name the metadata field that identifies the product (``None``: no products). Recorded
        in the catalog; every process that has it open takes it in at its next search."""
        field = products.checked_field(field)
        self.require_writable("a change of the product field")
        self._core.set_settings({products.SETTING: field or ""})
        if field is not None and len(self) and field not in self._core.store.field_names():
            log.warning(
                "no item of %s has the metadata field %r yet; until some do, each item is its own product",
                self.path,
                field,
            )

    # -- creating and opening ---------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str] | MilvusLocation,
        model: ModelArg,
        *,
        M: int = DEFAULT_M,
        ef_construction: int = DEFAULT_EF_CONSTRUCTION,
        ef: int = DEFAULT_EF,
        exist_ok: bool = False,
        threads: int | None = None,
        vector_dtype: str = "float32",
        reduce_to: int | None = None,
        product_field: str | None = None,
    ) -> Catalog:
        """A new, empty catalog bound to ``model`` (its fingerprint is recorded).

        ``product_field="product_id"`` names the metadata field that identifies each photo's
        product (see `set_product_field`), for searches grouped by product.

        ``vector_dtype="float16"`` halves the stored vectors (the graph stays float32).
        ``reduce_to=256`` plans a PCA graph for a large catalog: it is fitted on the first
        20,000 items as soon as they are in, and every later item goes into the small graph
        (`reduce` does the same for an existing catalog). Creation is
        atomic: a catalog appears whole, bound to exactly one model, even when two processes
        create it at once (the second then opens it, and gets `ModelMismatchError` if its model
        differs).
        """
        field = products.checked_field(product_field)
        if reduce_to is not None and not _whole(reduce_to, 0):  # stored; read as a whole number later
            raise BadArgumentError(f"reduce_to is a whole number of dimensions, got {reduce_to!r}")
        where = location(path)
        if isinstance(where, MilvusLocation):
            if vector_dtype != "float32" or reduce_to:
                raise CatalogError(f"{where}: a Milvus catalog stores float32 vectors, without a PCA graph")
            params = HnswParams(M, ef_construction, ef)
            created: Catalog = jobs.job("create_remote")(where, model, params, exist_ok, field, threads)
            return created
        root = Path(path).expanduser()
        opening.create(
            root, model, HnswParams(M, ef_construction, ef), vector_dtype, reduce_to, exist_ok, field
        )
        return cls.open(root, model, threads=threads)

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str] | MilvusLocation,
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
        where = location(path)
        if isinstance(where, MilvusLocation):
            opened: Catalog = jobs.job("open_remote")(where, model, readonly, threads)
            return opened
        core, model_path, embedder = opening.open_core(
            Path(path).expanduser(), model, readonly=readonly, rebuild=rebuild, load_graph=load_graph
        )
        return cls(core, model_path, embedder, threads)

    @classmethod
    def open_or_create(
        cls, path: str | os.PathLike[str] | MilvusLocation, model: ModelArg | None, **params: Any
    ) -> Catalog:
        """Reuse the catalog if there is one, else make it with ``params`` (those of `create`).

        An existing catalog keeps its settings, but a ``product_field`` it does not have is
        refused (`CatalogError`): grouping another catalog's photos by product is a change to
        ask for by name (`set_product_field`), not a side effect of opening it.
        """
        where = location(path)
        if isinstance(where, MilvusLocation):
            held = jobs.job("remote_exists")(where)
        else:
            held = (Path(path).expanduser() / DB_NAME).exists()
        if held:
            catalog = cls.open(path, model, threads=params.get("threads"))
            field = params.get("product_field")
            if field is not None and field != catalog.product_field:
                current = catalog.product_field
                catalog.close()
                had = f"groups photos by the field {current!r}" if current else "has no product field"
                raise CatalogError(
                    f"{path} already exists and {had}; opening it does not change that, so nothing "
                    f"was done. To group it by {field!r}, open it and call "
                    f"set_product_field({field!r}) (`fashionrec index ... --product-field {field}`); "
                    "or give a new catalog path."
                )
            return catalog
        if model is None:
            raise CatalogError(f"no catalog at {path} yet: pass the model to create it (--model).")
        params = {name: value for name, value in params.items() if value is not None}
        return cls.create(path, model, exist_ok=True, **params)

    @property
    def embedder(self) -> Embedder:
        """The model, loaded on first use (searches by vector or key never need it) and checked
        against what the catalog recorded: its fingerprint, and how it embeds a probe image."""
        with self._embedder_lock:
            if self._embedder is None:
                self._embedder = opening.load_embedder(self._core, self.model_path, self._threads)
            if not self._probed:
                opening.check_probe(self._core, self._embedder)
                self._probed = True
            return self._embedder

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

    def keys(self, prefix: str | None = None) -> list[str]:
        """Every key, or those starting with ``prefix`` (a range on the key index, not a scan)."""
        if prefix:
            return [key for key, _ in self._core.store.items_with_key_prefix(prefix)]
        return [item.key for item in self.iter_items()]

    def feed_keys(self, key_prefix: str) -> list[str]:
        """Keys of the items the feed with this key prefix added: the only ones its sync may
        remove (items indexed from a folder under the same prefix are not among them)."""
        return self._core.store.feed_keys(key_prefix) if key_prefix else []

    def feed_owners(self, keys: Iterable[str]) -> dict[str, str | None]:
        """For the keys held: the key prefix of the feed that owns each item, or None (indexed from
        a folder, added by hand, or synced before 0.2 recorded owners)."""
        return self._core.store.feed_owners(list(keys))

    def claim_for_feed(self, key_prefix: str, keys: Iterable[str]) -> int:
        """Record the feed with this key prefix as the owner of existing items (a feed's rows
        that an older version synced); returns how many were not recorded yet."""
        self.require_writable("recording a feed's items")
        with self._core.writing():
            return self._core.store.claim_for_feed(key_prefix, list(keys))

    def paths_under(self, folder: str | os.PathLike[str]) -> list[str]:
        """Stored image paths below ``folder`` (a range on the path index, not a scan)."""
        return [path for _, path in self._core.store.items_under(str(folder))]

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
        vector: np.ndarray = read_sound(self._core.vectors, [self.get(key).label], [key])[0]
        return vector

    def vectors(self, keys: Iterable[str]) -> np.ndarray:
        """Stored embeddings of several items, in the order of ``keys``."""
        keys = list(keys)
        found = self._core.store.items_by_key(keys)
        missing = [key for key in keys if key not in found]
        if missing:
            raise UnknownKeyError(f"no item with key {missing[0]!r} in {self.path} ({len(missing)} unknown).")
        return read_sound(self._core.vectors, [found[key].label for key in keys], keys)

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
        planned = core.store.get_setting("reduction.planned") or ""  # fitted at REDUCE_AFTER items
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
            "reduce_to": int(planned) if planned and core.reduction is None else None,
            "product_field": core.product_field,
            "vector_dtype": core.vectors.dtype.name,
            "vector_file": core.vectors.path.name,
            "vector_rows": core.rows,
            "disk_bytes": sum(p.stat().st_size for p in self.path.iterdir() if p.is_file()),
            "created_by": core.store.get_setting(opening.CREATED_BY),  # None: before 0.2.0
            "written_by": core.store.get_setting(opening.WRITTEN_BY),
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
        if is_vector(image_or_vector):
            vector = unit(image_or_vector, self.dim)  # type: ignore[arg-type]
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
        feed: str | None = None,
    ) -> int:
        """Add ready vectors in one transaction (for vectors computed elsewhere); existing keys
        are replaced. Unit vectors are stored exactly as given, others normalised; a zero, NaN or
        wrong-width vector fails the batch. ``sizes`` and ``mtimes_ns`` (of the image files) let
        a later `index_folder` of the same files know they are unchanged. ``feed`` (a feed's key
        prefix, given by `sync`) records that feed as the items' owner: only its sync removes them."""
        keys = list(keys)
        vectors = np.asarray(vectors)  # normalised before float32: 1e39 is finite in float64
        if vectors.shape != (len(keys), self.dim):
            raise CatalogError(f"expected vectors of shape ({len(keys)}, {self.dim}), got {vectors.shape}")
        if len(set(keys)) != len(keys):
            raise CatalogError("add_many got the same key twice in one batch; keys must be unique")
        off = ~(np.abs(row_norms(vectors)[:, None] - 1.0) <= 1e-6)  # unit: kept bit for bit
        if off.any():
            vectors = np.where(off, normalised(vectors), vectors)  # float64 norms: 3e38 is no overflow
        columns = [
            list(values) if values is not None else [None] * len(keys)
            for values in (paths, metadata, sizes, mtimes_ns)
        ]
        new = [
            NewItem(k, v, p, s, t, metadata=dict(m) if isinstance(m, Mapping) else m or {}, feed=feed)
            for k, v, p, m, s, t in zip(keys, vectors, *columns)
        ]
        # A batch that brings a planned catalog to its PCA goes into no full-dimension graph:
        # the reduction replaces that graph at once.
        deferred = self._planned() is not None and self._core.count + len(new) >= REDUCE_AFTER
        added = len(self._core.write(new, graph=not deferred)[0])
        self._reduce_when_planned()
        return added

    def _planned(self) -> int | None:
        """The planned PCA's dimension while it is not fitted yet (see `create`'s ``reduce_to``)."""
        planned = self._core.store.get_setting("reduction.planned") or ""
        return int(planned) if planned and self._core.reduction is None else None

    def _reduce_when_planned(self) -> None:
        """Fit the planned PCA once enough items are in (see `create`'s ``reduce_to``)."""
        planned = self._planned()
        core = self._core
        if planned is None or core.count < REDUCE_AFTER:
            if core.graph.index is not None and core.graph.generation != core.generation:
                with core.writing():  # a deferred batch that did not reach the reduction after all
                    core.graph_catch_up()
            return
        log.info(
            "%s holds %d items: fitting the planned PCA to %s dimensions", self.path, core.count, planned
        )
        try:
            self.reduce(planned)
        finally:
            if core.graph.index is not None and core.graph.generation != core.generation:
                with core.writing():  # the reduction failed: the full graph takes the batch in
                    core.graph_catch_up()

    def remove(self, *keys: str, remember: bool = True) -> int:
        """Remove items by key; unknown or already removed keys are ignored. Returns how many went.

        Removals stick: `index_folder` does not add a removed key back unless asked
        (``readd_removed=True``); `add` or `add_many` of the key does (see `removals`).
        ``remember=False`` removes the way ``prune`` does (the file is gone; if it comes back,
        it is indexed again)."""
        self.require_writable("a removal")
        if (odd := next((key for key in keys if not isinstance(key, str)), None)) is not None:
            raise BadArgumentError(f"keys are text; got {odd!r}, nothing was removed")
        if not remember:
            return removals.forget(self._core, keys)
        return removals.remove(self._core, keys)

    def removed_keys(self) -> list[str]:
        """Keys removed with `remove` and not added since: `index_folder` leaves their files out."""
        return self._core.store.removed_keys()

    def update_metadata(self, metadata: Mapping[str, Mapping[str, Any]]) -> int:
        """Replace the metadata of existing items in place (no re-embedding); unknown keys are
        ignored. Returns how many items changed."""
        self.require_writable("a metadata update")
        for key, fields in metadata.items():
            if not isinstance(fields, Mapping):
                raise BadArgumentError(
                    f"item {key!r}: metadata is a mapping of field names to values, not a "
                    f"{type(fields).__name__}; nothing was written"
                )
        values = {str(key): dict(fields) for key, fields in metadata.items()}
        return self._core.rewrite(lambda: self._core.store.update_metadata(values))

    def rebuild(self) -> list[str]:
        """Recreate the HNSW graph from the stored vectors (no re-embedding). Returns the keys of
        items left out because their stored vector is not finite (a damaged vector file; see
        `left_out_of_graph`)."""
        with self._core.writing():
            self._core.fresh_graph()
        self._core.save()
        return self.left_out_of_graph()

    def left_out_of_graph(self) -> list[str]:
        """Keys of items whose stored vector is not finite (bit rot), kept out of the graph since
        it was built or caught up; searches never return them. Remove and index them again."""
        labels = self._core.graph.left_out
        items = self._core.store.items_by_label(labels) if labels else {}
        return sorted(item.key for item in items.values())

    def index_folder(
        self,
        folder: str | os.PathLike[str],
        *,
        metadata: str | os.PathLike[str] | Mapping[str, Mapping[str, Any]] | None = None,
        prune: bool = False,
        progress: bool = True,
        batch_size: int = 32,
        key_prefix: str = "",
        readd_removed: bool = False,
    ) -> IndexReport:
        """Index every image below ``folder``; only new or changed files go through the model.

        Keys are ``key_prefix`` + the path relative to ``folder``: give each folder its own prefix
        to keep several in one catalog. A key already held by an image from elsewhere is refused
        before anything is written, never silently replaced. Each batch is committed on its own,
        so an interrupted run resumes where it stopped. Unreadable files are skipped and listed.
        Keys removed with `remove` are skipped (counted in the report) unless ``readd_removed``.
        ``metadata`` rows are matched to images by `metadata_match.RULE`; the report's
        ``metadata`` says how many matched, and which fit no image or several (given to none).
        """
        self.require_writable("indexing")
        report: IndexReport = jobs.job("index_folder")(
            self,
            folder,
            metadata=metadata,
            prune=prune,
            progress=progress,
            batch_size=batch_size,
            key_prefix=key_prefix,
            readd_removed=readd_removed,
        )
        return report

    def import_vectors(self, path: str | os.PathLike[str], *, progress: bool = False) -> ImportReport:
        """Add the vectors of Parquet files written by `fashionrec embed` or `export_vectors`
        (see `vector_transfer.import_vectors`): incremental, one transaction a batch."""
        self.require_writable("an import")
        report: ImportReport = jobs.job("import_vectors")(self, path, progress=progress)
        return report

    def export_vectors(self, path: str | os.PathLike[str]) -> ExportReport:
        """Write every item and vector in the Parquet layout `import_vectors` reads."""
        report: ExportReport = jobs.job("export_vectors")(self, path)
        return report

    def refine(
        self,
        label_field: str,
        out: str | os.PathLike[str],
        *,
        product_field: str | None = None,
        dim: int = 128,
        catalog_out: str | os.PathLike[str] | None = None,
        seed: int = 0,
        held_out: float = 0.2,
        epochs: int = 30,
    ) -> RefineReport:
        """Learn a projection of the stored vectors from the items' ``label_field`` (and
        ``product_field``) and write the refined model to ``out``, as `fashionrec refine` does
        (see `quality.refine.refine`); ``catalog_out`` also derives a catalog under it."""
        report: RefineReport = jobs.job("refine")(
            self,
            label_field,
            out,
            product_field=product_field,
            dim=dim,
            catalog_out=catalog_out,
            seed=seed,
            held_out=held_out,
            epochs=epochs,
        )
        return report

    def sync(
        self,
        feed: str | os.PathLike[str],
        *,
        images_root: str | os.PathLike[str] | None = None,
        product_column: str = "product_id",
        image_column: str = "image",
        key_prefix: str = "feed/",
        batch_size: int = 32,
        download: DownloadSettings | None = None,
        progress: bool = False,
    ) -> SyncReport:
        """Bring the catalog in step with a product feed (CSV or JSON lines, one row per image):
        new images added, changed ones re-embedded, changed fields rewritten, images gone from
        the feed removed (only items under ``key_prefix``, which the feed owns). Rows that fail
        are reported and leave their item as it was. See `fashionrec_onnx.feeds.sync` for the rules."""
        report: SyncReport = jobs.job("sync")(
            self,
            feed,
            images_root=images_root,
            product_column=product_column,
            image_column=image_column,
            key_prefix=key_prefix,
            batch_size=batch_size,
            download=download,
            progress=progress,
        )
        return report

    # -- searching ------------------------------------------------------------------------------------

    def search(
        self,
        query: Queries,
        k: int = 5,
        filter: Filter | None = None,
        *,
        box: Box | None = None,
        collapse_duplicates: bool = False,
        group_by: str | None = None,
        negative: Queries | None = None,
    ) -> list[Hit]:
        """The k most similar items to an image, a vector, or the key of an item in the catalog.

        A key searches "more like this" and leaves the item itself out (with a product field,
        its whole product). ``filter`` is a dict of metadata values (a list value means any of
        them) or a callable taking an `Item`; k hits that all match come back when that many
        exist. ``box = (left, top, right, bottom)`` searches for a region of the image only
        (pixels of the upright image). ``collapse_duplicates=True`` shows one image per group of
        near-duplicates (see `duplicates`); the groups are found on the first such search after a
        change. ``group_by="product"`` returns the k best distinct products (see
        `set_product_field`): each hit is a product's best-matching photo, with its ``product``
        id and its other ``photos``.

        ``query`` may be a list (several positives) and ``negative`` a list of images, vectors or
        keys to move away from: the search then looks for mean(positives) - 0.5 * mean(negatives),
        scaled to unit length (see `querying.combined`); every key among them is left out.
        """
        return self._querier.answer(
            planner.search, query, k, filter, box, collapse_duplicates, group_by, negative
        )

    def more_like_this(
        self,
        key: str | list[str],
        k: int = 5,
        filter: Filter | None = None,
        *,
        collapse_duplicates: bool = False,
        group_by: str | None = None,
        negative: list[str] | None = None,
    ) -> list[Hit]:
        """Items like the one stored under ``key`` (itself left out), or like several keys and
        unlike the ``negative`` keys. Unlike `search`, a string here is only ever a key, never a
        file: the entry point for remote callers."""
        keys = key if isinstance(key, (list, tuple)) else [key]
        queries: list[Query] = [self._key_query(x) for x in keys]
        unlike: list[Query] = [self._key_query(x) for x in negative or []]
        return self._querier.answer(
            planner.search, queries, k, filter, None, collapse_duplicates, group_by, unlike or None
        )

    def _key_query(self, key: object) -> KeyQuery:
        if not isinstance(key, str):
            raise UnknownKeyError(f"no item with key {shown(str(key))} in {self.path}.")
        return KeyQuery(key)

    def duplicates(self, threshold: float | None = None, *, neighbours: int = NEIGHBOURS) -> DuplicateReport:
        """Groups of near-identical images (re-uploads, resized or recompressed copies), found
        through the graph: each item's ``neighbours`` nearest, then the connected components of
        the pairs whose similarity is at least ``threshold``. ``threshold=None`` calibrates it on
        this catalog (see `duplicates`), as `search(..., collapse_duplicates=True)` does."""
        return self._querier.duplicates(threshold, neighbours=neighbours)

    def exact_search(
        self,
        query: Queries,
        k: int = 5,
        filter: Filter | None = None,
        *,
        box: Box | None = None,
        collapse_duplicates: bool = False,
        group_by: str | None = None,
        negative: Queries | None = None,
    ) -> list[Hit]:
        """The oracle: exact KNN over every stored vector, read in blocks (see `oracle`); the
        same arguments as `search`."""
        return self._querier.answer(exact, query, k, filter, box, collapse_duplicates, group_by, negative)

    # -- checking and reshaping -----------------------------------------------------------------------

    def check(self, k: int = 5, sample: int = 1000, seed: int = 0) -> CheckReport:
        """recall@k of searches (HNSW, plus the rerank of a reduced catalog) against exact KNN
        over the full stored vectors, queried with the catalog's own items."""
        if not (isinstance(k, int) and isinstance(sample, int) and k >= 1 and sample >= 1):
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
        if dim is not None and not _whole(dim, 1):
            raise BadArgumentError(f"a reduction is to a whole number of dimensions, got {dim!r}")
        self.require_writable("a reduction" if dim is not None else "a return to full vectors")
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
            core.ensure_tier()
            core.fresh_graph()
        try:
            core.save()
        except DiskFullError as exc:
            raise DiskFullError(
                f"the disk holding {self.path} is full: the new graph could not be saved ({exc.__cause__}). "
                f"The {'reduction' if pca is not None else 'return to full vectors'} is recorded and the "
                "stored items are intact, but the graph must be rebuilt: free some space and run "
                f"`fashionrec rebuild --catalog {self.path}`."
            ) from exc
        return pca
