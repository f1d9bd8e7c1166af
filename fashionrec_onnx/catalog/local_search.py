"""A local catalog's side of the searches (`answering` answers them, written once for every
backend): one consistent snapshot to read (other processes' writes taken in, the read lock held),
a filter as a mask over labels, the planner or the oracle, groups by label, and the hits with
their items."""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from ..embedder import Embedder
from ..errors import CatalogCorruptError
from ..images import Box
from . import duplicates as near_duplicates
from . import oracle
from . import search as planner
from .answering import Hit, shown
from .columns import callable_mask
from .core import CatalogCore
from .duplicates import NEIGHBOURS, DuplicateReport
from .local_duplicates import LocalSource
from .matches import MatchCache, Matches
from .products import Products
from .search import rerank
from .vectors import sound_rows

NO_LABELS = np.zeros(0, np.int64)


Ranked = tuple[np.ndarray, np.ndarray]
Method = Callable[[CatalogCore, np.ndarray, int, np.ndarray, "Matches | None"], Ranked]


def exact(
    core: CatalogCore, vector: np.ndarray, k: int, exclude: np.ndarray, allowed: Matches | None
) -> Ranked:
    """The oracle with the planner's signature: exact KNN among the allowed live items."""
    mask = core.live_mask() if allowed is None else allowed.mask
    if allowed is None and len(exclude):
        mask = mask.copy()
        mask[exclude] = False
    if core.tier is not None:
        labels, distances = oracle.bounded_topk(
            core.vectors, core.rows, core.tier, core.tier_rows, mask, vector, k
        )
    else:
        labels, distances = oracle.exact_topk(core.vectors, core.rows, mask, vector, k)
    return labels[0], distances[0]


class LocalSearches:
    """The searches' view of one open local catalog; ``embedder`` loads the model when an image
    comes. Keeps what is worth keeping between searches: the product of each label and the
    near-duplicate groups, per catalog generation."""

    def __init__(self, core: CatalogCore, embedder: Callable[[], Embedder]) -> None:
        self._core = core
        self._embedder = embedder
        self._groups: tuple[int, np.ndarray] | None = None  # (generation, label -> duplicate group)
        self._groups_lock = threading.Lock()
        self._products: tuple[tuple[int, str], Products] | None = None
        self._matches = MatchCache()

    # -- what `answering.Searches` asks ---------------------------------------------------------

    @property
    def where(self) -> str:
        return str(self._core.root)

    @property
    def dim(self) -> int:
        return self._core.dim

    @property
    def product_field(self) -> str | None:
        """As last caught up (the view catches up; a field just named elsewhere shows next time)."""
        return self._core.product_field

    def embed(self, image: Any, box: Box | None) -> np.ndarray:
        return self._embedder().embed_one(image, box=box)

    def is_key(self, key: str) -> bool:
        return self._core.store.item_by_key(key) is not None

    @contextlib.contextmanager
    def view(self, exact_search: bool, filter: Any) -> Iterator[LocalView]:
        """One consistent state (other processes' writes taken in) for the whole search."""
        with self._core.consistent() as core:
            allowed = None
            if isinstance(filter, Mapping):
                wanted = filter
                allowed = self._matches.get(
                    core.generation, wanted, lambda: core.columns.mask(wanted, core.live_mask())
                )
            elif filter is not None:
                live = core.live_mask()
                allowed = Matches(callable_mask(filter, core.store, len(live)) & live)
            yield LocalView(self, exact if exact_search else planner.search, allowed)

    # -- kept between searches ------------------------------------------------------------------

    def products(self) -> Products | None:
        """Label -> product for the current generation (the caller holds the read lock on a
        caught-up catalog); None when the catalog has no product field."""
        field = self._core.product_field
        if field is None:
            return None
        with self._groups_lock:
            cached = self._products
            if cached is None or cached[0] != (self._core.generation, field):
                codes, names = self._core.columns.codes(field, self._core.rows)
                cached = self._products = ((self._core.generation, field), Products.of(codes, names))
            return cached[1]

    def product_count(self) -> int | None:
        """Distinct products among the live items (an item without a product id counts as one);
        None when the catalog has no product field."""
        self._core.sync()
        with self._core.rw.read():
            products = self.products()
            if products is None:
                return None
            codes = products.codes[self._core.live_mask()[: len(products.codes)]]
            return len(np.unique(codes[codes >= 0])) + int((codes < 0).sum())

    def group_of(self) -> np.ndarray:
        """Label -> near-duplicate group at the default threshold, found once per catalog state.
        The caller holds the read lock on a caught-up catalog."""
        with self._groups_lock:
            if self._groups is None or self._groups[0] != self._core.generation:
                _, group_of = near_duplicates.find(LocalSource(self._core), None, NEIGHBOURS)
                self._groups = (self._core.generation, group_of)
            return self._groups[1]

    def duplicates(self, threshold: float | None = None, *, neighbours: int = NEIGHBOURS) -> DuplicateReport:
        """Groups of near-identical images (see `reading.CatalogReader.duplicates`); the default
        threshold's groups are kept for collapsed searches."""
        near_duplicates.validated(threshold, neighbours)
        self._core.sync()
        with self._core.rw.read():
            report, group_of = near_duplicates.find(LocalSource(self._core), threshold, neighbours)
            if threshold is None and neighbours == NEIGHBOURS:
                with self._groups_lock:
                    self._groups = (self._core.generation, group_of)
            return report


def _codes(labels: np.ndarray, of_label: np.ndarray) -> np.ndarray:
    """``of_label[label]`` for each label; -1 past its end (written after it was made)."""
    codes = np.full(len(labels), -1, np.int64)
    inside = labels < len(of_label)
    codes[inside] = of_label[labels[inside]]
    return codes


class LocalView:
    """`answering.View` of a local catalog: labels as ids, read under the read lock."""

    def __init__(self, searches: LocalSearches, method: Method, allowed: Matches | None) -> None:
        self._searches = searches
        self._core = searches._core
        self._method = method
        self._allowed = allowed  # the filter's matches; the excluded labels are taken out once
        self._cleared = False

    @property
    def widest(self) -> int:
        return self._core.count

    def stored(self, key: str) -> tuple[np.ndarray, int] | None:
        item = self._core.store.item_by_key(key)
        if item is None:
            return None
        stored = self._core.vectors.read([item.label])[0]
        if not sound_rows(stored[None])[0]:
            raise CatalogCorruptError(
                f"the stored vector of {shown(key)} in {self._core.vectors.path} is not finite "
                "or not unit length "
                "(the file is damaged there); remove the item and index its image again "
                f"(`fashionrec verify --catalog {self._core.root}` counts such items)."
            )
        return stored, item.label

    def whole_products(self, ids: list[int]) -> list[int]:
        products = self._searches.products()
        labels = np.asarray(ids, np.int64)
        return products.whole(labels).tolist() if products is not None else ids

    def nearest(self, vector: np.ndarray, wanted: int, exclude: list[int]) -> tuple[list[int], np.ndarray]:
        excluded = np.asarray(exclude, np.int64)
        if self._allowed is not None and not self._cleared:
            self._allowed = self._allowed.without(excluded)
            self._cleared = True
        labels, distances = self._method(self._core, vector, wanted, excluded, self._allowed)
        return labels.tolist(), distances

    def groups(self, ids: list[int], duplicates: bool, products: bool) -> list[np.ndarray]:
        labels = np.asarray(ids, np.int64)
        found = [_codes(labels, self._searches.group_of())] if duplicates else []
        if products:
            by_product = self._searches.products()
            assert by_product is not None  # a grouped request needs a product field
            found.append(_codes(labels, by_product.codes))
        return found

    def hits(self, ids: list[int], distances: np.ndarray, query: np.ndarray | None) -> list[Hit]:
        products = self._searches.products()
        photos: dict[int, np.ndarray] = {}
        if query is not None and products is not None:
            for label in ids:
                others = products.members(label)
                others = others[others != label]
                if len(others):
                    photos[label] = rerank(self._core, query, others)[0]
        wanted = ids + [int(x) for others in photos.values() for x in others]
        items = self._core.store.items_by_label(wanted)
        hits: list[Hit] = []
        for label, distance in zip(ids, distances.tolist()):
            item = items.get(int(label))
            if item is None or not math.isfinite(distance):  # a damaged stored vector ranks nowhere
                continue
            shots = tuple(items[x].key for x in photos.get(label, NO_LABELS).tolist() if x in items)
            product = products.name(label) if products is not None else None
            hits.append(Hit.at(len(hits) + 1, item.key, item.path, distance, item.metadata, product, shots))
        return hits
