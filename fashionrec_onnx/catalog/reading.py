"""`CatalogReader`: what an open catalog is and holds, and the searches; the part of `Catalog`
that only reads (`writing.CatalogWriter` adds the writes, `facade.Catalog` creating and opening)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..embedder import Embedder
from ..errors import BadArgumentError, UnknownKeyError
from ..images import Box
from ..model import ModelInfo
from . import answering, maintenance, opening
from .answering import Hit, KeyQuery, Queries, Query, Request, Searches, shown
from .columns import Filter
from .core import CatalogCore, read_only_refusal
from .duplicates import NEIGHBOURS, DuplicateReport
from .hnsw import HnswParams
from .local_search import LocalSearches
from .maintenance import CheckReport
from .pca import PCA
from .store import Item
from .vectors import read_sound


class CatalogReader:
    """The reads of `Catalog` (see there): an open catalog's contents, properties and searches."""

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
        self._searches = LocalSearches(core, lambda: self.embedder)

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
        return self._searches.product_count()

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

    def removed_keys(self) -> list[str]:
        """Keys removed with `remove` and not added since: `index_folder` leaves their files out."""
        return self._core.store.removed_keys()

    def left_out_of_graph(self) -> list[str]:
        """Keys of items whose stored vector is not finite (bit rot), kept out of the graph since
        it was built or caught up; searches never return them. Remove and index them again."""
        labels = self._core.graph.left_out
        items = self._core.store.items_by_label(labels) if labels else {}
        return sorted(item.key for item in items.values())

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
        scaled to unit length (see `answering.combined`); every key among them is left out.
        """
        return self._answer(False, query, k, filter, box, collapse_duplicates, group_by, negative)

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
        return self._answer(False, queries, k, filter, None, collapse_duplicates, group_by, unlike or None)

    def _key_query(self, key: object) -> KeyQuery:
        if not isinstance(key, str):
            raise UnknownKeyError(f"no item with key {shown(str(key))} in {self.path}.")
        return KeyQuery(key)

    def duplicates(self, threshold: float | None = None, *, neighbours: int = NEIGHBOURS) -> DuplicateReport:
        """Groups of near-identical images (re-uploads, resized or recompressed copies), found
        through the graph: each item's ``neighbours`` nearest, then the connected components of
        the pairs whose similarity is at least ``threshold``. ``threshold=None`` calibrates it on
        this catalog (see `duplicates`), as `search(..., collapse_duplicates=True)` does."""
        return self._searches.duplicates(threshold, neighbours=neighbours)

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
        return self._answer(True, query, k, filter, box, collapse_duplicates, group_by, negative)

    def _answer(
        self,
        exact: bool,
        query: Queries,
        k: int,
        filter: Filter | None,
        box: Box | None,
        collapse_duplicates: bool,
        group_by: str | None,
        negative: Queries | None,
    ) -> list[Hit]:
        searches = self._searchable()
        request = Request.of(query, k, box, negative, collapse_duplicates, group_by, searches.product_field)
        return answering.answer(searches, exact, request, filter)

    def _searchable(self) -> Searches:
        """What the searches read this catalog through (a remote catalog gives its own)."""
        return self._searches

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

