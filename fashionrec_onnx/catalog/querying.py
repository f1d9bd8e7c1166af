"""Answering a search: the query vector, one consistent state to read, the planner or the
oracle, near-duplicates collapsed, and the hits with their items.

A query string is a key first and a file second (`search`); a `KeyQuery` is only ever a key
(`more_like_this`, for remote callers). Images are embedded before any lock is taken; the rest
reads one SQLite snapshot after catching up with other processes.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..embedder import Embedder
from ..errors import BadArgumentError, CatalogCorruptError, CatalogError, UnknownKeyError
from ..images import Box, Source, check_box
from . import duplicates as near_duplicates
from . import oracle
from .columns import Filter, callable_mask
from .core import CatalogCore
from .duplicates import NEIGHBOURS, DuplicateReport
from .kernels import normalised, vector_problem
from .local_duplicates import LocalSource
from .products import Products, checked_group_by
from .search import rerank
from .vectors import sound_rows

COLLAPSE_EXTRA = 10  # a collapsed or grouped search first asks for 2k + this many hits
NO_LABELS = np.zeros(0, np.int64)
NEGATIVE_WEIGHT = 0.5  # how much a negative pulls the query away (see `combined`)


@dataclass(frozen=True)
class Hit:
    """One search result. ``distance`` is squared L2; on unit vectors ``similarity = 1 - d/2``."""

    rank: int
    key: str
    path: str | None
    distance: float
    similarity: float
    metadata: dict[str, Any]
    product: str | None = None  # the item's product id, when the catalog has a product field
    photos: tuple[str, ...] = ()  # grouped by product: the product's other keys, best first


@dataclass(frozen=True)
class KeyQuery:
    """A query that can only name a stored item, never a file."""

    key: str


Query = Source | str | KeyQuery
Queries = Query | list[Query] | tuple[Query, ...]


def shown(text: str) -> str:
    """A caller's string in a message: quoted, and cut when it is long."""
    return repr(text) if len(text) <= 80 else f"{text[:60]!r}… ({len(text)} characters)"


def several(queries: Queries) -> list[Query]:
    """A list or tuple holds several queries; anything else is one."""
    return list(queries) if isinstance(queries, (list, tuple)) else [queries]


def combined(positives: list[np.ndarray], negatives: list[np.ndarray]) -> np.ndarray:
    """The one vector a search with several positives and negatives looks for:

        q = mean(positives) - NEGATIVE_WEIGHT * mean(negatives), scaled to unit length.

    On unit vectors, ranking by similarity to q is ranking by the mean similarity to the positives
    minus NEGATIVE_WEIGHT times the mean similarity to the negatives. A single positive without
    negatives is used exactly as given, so it searches exactly as a plain search does."""
    if len(positives) == 1 and not negatives:
        return positives[0]
    vector = np.asarray(np.mean(positives, axis=0, dtype=np.float64))
    if negatives:
        vector = vector - NEGATIVE_WEIGHT * np.mean(negatives, axis=0, dtype=np.float64)
    norm = float(np.linalg.norm(vector))
    if not np.isfinite(norm) or norm < 1e-6:
        raise BadArgumentError(
            "the queries cancel out: their combined vector has no direction left to search"
        )
    return (vector / norm).astype(np.float32)


def is_vector(value: object) -> bool:
    return isinstance(value, np.ndarray) and value.ndim == 1 and value.dtype.kind == "f"


def unit(vector: np.ndarray, dim: int) -> np.ndarray:
    """A caller's vector at unit length; its norm is taken in float64, so huge or tiny finite
    values keep their direction (see `kernels.normalised`)."""
    vector = np.asarray(vector).reshape(-1)
    if vector.shape != (dim,):
        raise CatalogError(f"a vector must have {dim} values, got {vector.shape[0]}")
    problem = vector_problem(vector)
    if problem:
        raise CatalogError(f"the vector has no direction to search or store: {problem}")
    return normalised(vector)


Ranked = tuple[np.ndarray, np.ndarray]
Method = Callable[[CatalogCore, np.ndarray, int, np.ndarray, "np.ndarray | None"], Ranked]


def exact(
    core: CatalogCore, vector: np.ndarray, k: int, exclude: np.ndarray, allowed: np.ndarray | None
) -> Ranked:
    """The oracle with the planner's signature: exact KNN among the allowed live items."""
    mask = core.live_mask() if allowed is None else allowed
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


class Querier:
    """The searches of one open catalog; ``embedder`` loads the model when an image comes."""

    def __init__(self, core: CatalogCore, embedder: Callable[[], Embedder]) -> None:
        self._core = core
        self._embedder = embedder
        self._groups: tuple[int, np.ndarray] | None = None  # (generation, label -> duplicate group)
        self._groups_lock = threading.Lock()
        self._products: tuple[tuple[int, str], Products] | None = None

    def query_vector(self, query: Source | str | KeyQuery) -> tuple[np.ndarray, int | None]:
        """The vector to search with, and the label to leave out ("more like this")."""
        key = query.key if isinstance(query, KeyQuery) else query if isinstance(query, str) else None
        if key is not None:
            item = self._core.store.item_by_key(key) if len(key) <= 4096 else None
            if item is not None:
                stored = self._core.vectors.read([item.label])[0]
                if not sound_rows(stored[None])[0]:
                    raise CatalogCorruptError(
                        f"the stored vector of {shown(key)} in {self._core.vectors.path} is not finite "
                        "or not unit length "
                        "(the file is damaged there); remove the item and index its image again "
                        f"(`fashionrec verify --catalog {self._core.root}` counts such items)."
                    )
                return stored, item.label
            if isinstance(query, KeyQuery):
                raise UnknownKeyError(f"no item with key {shown(key)} in {self._core.root}.")
        if is_vector(query):
            return unit(query, self._core.dim), None  # type: ignore[arg-type]
        if query == "":  # Path("") is the current directory, not an image
            raise BadArgumentError("the query is empty: give a catalog key or an image file")
        if isinstance(query, str):
            try:
                exists = Path(query).expanduser().exists()
            except (OSError, ValueError):
                exists = False
            if not exists:
                raise CatalogError(f"{shown(query)} is neither a key in {self._core.root} nor an image file.")
        return self._embedder().embed_one(query), None  # type: ignore[arg-type]

    def embed_region(self, query: Source | str | KeyQuery, box: Box) -> np.ndarray:
        """A box crops an image: a key or a vector has no pixels to crop."""
        check_box(box)
        if isinstance(query, KeyQuery) or is_vector(query):
            raise BadArgumentError("a box crops an image; it cannot apply to a catalog key or a vector")
        if (
            isinstance(query, str)
            and self._core.store.item_by_key(query) is not None
            and not Path(query).expanduser().is_file()
        ):
            raise BadArgumentError(
                f"{query[:200]!r} is a key in {self._core.root}; a box crops an image, so pass an image file"
            )
        return self._embedder().embed_one(query, box=box)

    def _prepared(self, query: Query, box: Box | None) -> np.ndarray | None:
        """An image's vector, embedded before any lock is taken (None for keys and vectors)."""
        if box is not None:
            return self.embed_region(query, box)
        if not isinstance(query, (str, KeyQuery)) and not is_vector(query):
            return self._embedder().embed_one(query)
        return None

    @contextlib.contextmanager
    def searching(
        self,
        query: Queries,
        k: int,
        filter: Filter | None,
        box: Box | None = None,
        negative: Queries | None = None,
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
        """What every search starts with: the query vector, the labels to leave out and the
        filter's mask, all read from one consistent state (other processes' writes taken in)."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise BadArgumentError(f"k must be a whole number >= 1, got {k!r}")
        positives, negatives = several(query), several(negative) if negative is not None else []
        if not positives:
            raise BadArgumentError("a search needs at least one query (an image, a vector or a key)")
        if box is not None and (len(positives) > 1 or negatives):
            raise BadArgumentError("a box crops one query image; it cannot apply to several queries")
        core = self._core
        prepared = [self._prepared(q, box) for q in positives], [self._prepared(q, None) for q in negatives]
        with core.consistent():
            wanted = [self._vectors(qs, ready) for qs, ready in zip((positives, negatives), prepared)]
            vector = combined([v for v, _ in wanted[0]], [v for v, _ in wanted[1]])
            excluded = np.asarray(
                [label for side in wanted for _, label in side if label is not None], np.int64
            )
            products = self.products()
            if products is not None:
                excluded = products.whole(excluded)
            allowed = None
            if filter is not None:
                live = core.live_mask()
                if isinstance(filter, Mapping):
                    allowed = core.columns.mask(filter, live)
                else:
                    allowed = callable_mask(filter, core.store, len(live)) & live
                allowed[excluded[excluded < len(allowed)]] = False
            yield vector, excluded, allowed

    def _vectors(
        self, queries: list[Query], ready: list[np.ndarray | None]
    ) -> list[tuple[np.ndarray, int | None]]:
        return [(v, None) if v is not None else self.query_vector(q) for q, v in zip(queries, ready)]

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

    def hits(self, labels: np.ndarray, distances: np.ndarray, query: np.ndarray | None = None) -> list[Hit]:
        """Hits with their items; with ``query`` (a grouped search) each lists its product's
        other photos, nearest the query first."""
        products = self.products()
        photos: dict[int, np.ndarray] = {}
        if query is not None and products is not None:
            for label in labels.tolist():
                others = products.members(label)
                others = others[others != label]
                if len(others):
                    photos[label] = rerank(self._core, query, others)[0]
        wanted = labels.tolist() + [int(x) for others in photos.values() for x in others]
        items = self._core.store.items_by_label(wanted)
        hits: list[Hit] = []
        for label, distance in zip(labels.tolist(), distances.tolist()):
            item = items.get(int(label))
            if item is None or not math.isfinite(distance):  # a damaged stored vector ranks nowhere
                continue
            d = max(float(distance), 0.0)
            shots = tuple(items[x].key for x in photos.get(label, NO_LABELS).tolist() if x in items)
            product = products.name(label) if products is not None else None
            hits.append(
                Hit(len(hits) + 1, item.key, item.path, d, 1.0 - d / 2.0, dict(item.metadata), product, shots)
            )
        return hits

    def answer(
        self,
        method: Method,
        query: Queries,
        k: int,
        filter: Filter | None,
        box: Box | None,
        collapse_duplicates: bool,
        group_by: str | None = None,
        negative: Queries | None = None,
    ) -> list[Hit]:
        """A search answered by ``method`` (the planner or the exact oracle)."""
        grouped = checked_group_by(group_by, self._core.product_field)
        with self.searching(query, k, filter, box, negative) as (vector, exclude, allowed):
            groupings = [self._group_of()] if collapse_duplicates else []
            if grouped:
                products = self.products()
                assert products is not None
                groupings.append(products.codes)
            if groupings:
                labels, distances = self._distinct(method, vector, int(k), exclude, allowed, groupings)
            else:
                labels, distances = method(self._core, vector, int(k), exclude, allowed)
            return self.hits(labels, distances, vector if grouped else None)

    def _distinct(
        self,
        method: Method,
        vector: np.ndarray,
        k: int,
        exclude: np.ndarray,
        allowed: np.ndarray | None,
        groupings: list[np.ndarray],
    ) -> tuple[np.ndarray, np.ndarray]:
        """k hits, one per group (of near-duplicates, then of products): more candidates asked
        for, and every hit whose group already showed up dropped. On the exact oracle this is
        exactly an exact search followed by a group-by: a group's first hit is its best."""
        wanted = 2 * k + COLLAPSE_EXTRA
        while True:
            labels, distances = method(self._core, vector, wanted, exclude, allowed)
            kept = np.arange(len(labels))
            for group_of in groupings:
                kept = kept[near_duplicates.collapse(labels[kept], group_of, exclude, len(kept))]
            kept = kept[:k]
            if len(kept) >= k or len(labels) < wanted or wanted >= self._core.count:
                return labels[kept], distances[kept]
            wanted *= 4

    def _group_of(self) -> np.ndarray:
        """Label -> near-duplicate group at the default threshold, found once per catalog state.
        The caller holds the read lock on a caught-up catalog."""
        with self._groups_lock:
            if self._groups is None or self._groups[0] != self._core.generation:
                _, group_of = near_duplicates.find(LocalSource(self._core), None, NEIGHBOURS)
                self._groups = (self._core.generation, group_of)
            return self._groups[1]

    def duplicates(self, threshold: float | None = None, *, neighbours: int = NEIGHBOURS) -> DuplicateReport:
        """Groups of near-identical images (re-uploads, resized or recompressed copies), found
        through the graph: each item's ``neighbours`` nearest, then the connected components of
        the pairs whose similarity is at least ``threshold``. ``threshold=None`` calibrates it on
        this catalog (see `duplicates`), as `search(..., collapse_duplicates=True)` does."""
        near_duplicates.validated(threshold, neighbours)
        self._core.sync()
        with self._core.rw.read():
            report, group_of = near_duplicates.find(LocalSource(self._core), threshold, neighbours)
            if threshold is None and neighbours == NEIGHBOURS:
                with self._groups_lock:
                    self._groups = (self._core.generation, group_of)
            return report
