"""Answering a search, written once for both storage backends.

The request is checked; images are embedded before anything is read (a local catalog holds its
read lock only while it reads); each query is resolved (a key to its stored vector, a vector to
unit length, an image embedded); positives and negatives are combined into one vector; the queried
items, and with a product field their whole products, are left out; a collapsed or grouped search
keeps one hit per group of near-duplicates, then per product, asking for more candidates until k
are in hand.

What differs per backend is a `Searches` (how to embed, what a key is, where the catalog lives)
and the `View` it opens: one consistent read of the catalog (a local catalog's snapshot under its
read lock; a Milvus collection as its consistency level shows it) that finds a key's stored
vector, the nearest items to a vector (planner or engine, approximate or exact, the filter bound
in), the groups of candidates, and makes the hits. Ids are the view's own (labels locally, keys on
Milvus); only hits leave it.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from ..errors import BadArgumentError, CatalogError, UnknownKeyError
from ..images import Box, Source, check_box
from .kernels import normalised, vector_problem
from .products import checked_group_by

COLLAPSE_EXTRA = 10  # a collapsed or grouped search first asks for 2k + this many hits
LONGEST_KEY = 4096  # a longer query string is never looked up as a key
NEGATIVE_WEIGHT = 0.5  # how much a negative pulls the query away (see `combined`)

Id = TypeVar("Id")


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

    @classmethod
    def at(
        cls, rank: int, key: str, path: str | None, distance: float, metadata: dict[str, Any],
        product: str | None, photos: tuple[str, ...],
    ) -> Hit:  # fmt: skip
        """A hit at ``rank`` (from 1), its similarity from its squared distance."""
        d = max(float(distance), 0.0)
        return cls(rank, key, path, d, 1.0 - d / 2.0, dict(metadata), product, photos)


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


@dataclass(frozen=True)
class Request:
    """A checked search request."""

    positives: list[Query]
    negatives: list[Query]
    k: int
    box: Box | None
    collapse: bool  # one hit per group of near-duplicates
    grouped: bool  # one hit per product

    @classmethod
    def of(
        cls,
        query: Queries,
        k: object,
        box: Box | None,
        negative: Queries | None,
        collapse_duplicates: bool,
        group_by: str | None,
        product_field: str | None,
    ) -> Request:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise BadArgumentError(f"k must be a whole number >= 1, got {k!r}")
        grouped = checked_group_by(group_by, product_field)
        positives, negatives = several(query), several(negative) if negative is not None else []
        if not positives:
            raise BadArgumentError("a search needs at least one query (an image, a vector or a key)")
        if box is not None and (len(positives) > 1 or negatives):
            raise BadArgumentError("a box crops one query image; it cannot apply to several queries")
        return cls(positives, negatives, int(k), box, bool(collapse_duplicates), grouped)


class View(Protocol[Id]):
    """One consistent read of a catalog, as a search sees it."""

    @property
    def widest(self) -> int:
        """The most candidates one `nearest` call can usefully ask for."""

    def stored(self, key: str) -> tuple[np.ndarray, Id] | None:
        """A stored item's vector and id; None when no item has this key."""

    def whole_products(self, ids: list[Id]) -> list[Id]:
        """``ids`` and every other photo of their products (just ``ids`` without a product field)."""

    def nearest(self, vector: np.ndarray, wanted: int, exclude: list[Id]) -> tuple[list[Id], np.ndarray]:
        """Up to ``wanted`` items passing the view's filter, not excluded, nearest first, with
        their squared distances. ``exclude`` is the same at every call of one search."""

    def groups(self, ids: list[Id], duplicates: bool, products: bool) -> list[np.ndarray]:
        """For each grouping asked (near-duplicates, then products), each id's group; -1: alone."""

    def hits(self, ids: list[Id], distances: np.ndarray, query: np.ndarray | None) -> list[Hit]:
        """The hits of these ids; with ``query`` (grouped by product) each lists its product's
        other photos, nearest the query first."""


class Searches(Protocol):
    """What a catalog's storage offers the searches above it."""

    @property
    def where(self) -> str:
        """The catalog, as messages name it."""

    @property
    def dim(self) -> int: ...

    @property
    def product_field(self) -> str | None: ...

    def embed(self, image: Any, box: Box | None) -> np.ndarray:
        """An image's embedding (of the region ``box`` only, when given)."""

    def is_key(self, key: str) -> bool: ...

    def view(self, exact: bool, filter: Any) -> AbstractContextManager[View[Any]]:
        """A consistent read answering with exact or approximate search among ``filter``'s items
        (a mapping of metadata values, a callable taking an `Item`, or None)."""


@dataclass
class _Resolved(Generic[Id]):
    vector: np.ndarray
    id: Id | None  # the stored item a key query names: left out of the hits


def answer(searches: Searches, exact: bool, request: Request, filter: Any) -> list[Hit]:
    """The hits of one search (see `reading.CatalogReader.search` for what each argument does)."""
    ready = (
        [_embedded_first(searches, query, request.box) for query in request.positives],
        [_embedded_first(searches, query, None) for query in request.negatives],
    )
    with searches.view(exact, filter) as view:
        sides = [
            [known or _resolved(searches, view, query) for query, known in zip(queries, done)]
            for queries, done in zip((request.positives, request.negatives), ready)
        ]
        vector = combined([r.vector for r in sides[0]], [r.vector for r in sides[1]])
        exclude = [r.id for side in sides for r in side if r.id is not None]
        if exclude:
            exclude = view.whole_products(exclude)
        if request.collapse or request.grouped:
            ids, distances = _distinct(view, vector, request, exclude)
        else:
            ids, distances = view.nearest(vector, request.k, exclude)
        return view.hits(ids, distances, vector if request.grouped else None)


def _embedded_first(searches: Searches, query: Query, box: Box | None) -> _Resolved[Any] | None:
    """An image query's vector, embedded before the view opens (None for keys, files named by a
    string, and vectors: those are resolved in the view)."""
    if box is not None:
        check_box(box)
        if isinstance(query, KeyQuery) or is_vector(query):
            raise BadArgumentError("a box crops an image; it cannot apply to a catalog key or a vector")
        if (
            isinstance(query, str)
            and len(query) <= LONGEST_KEY
            and searches.is_key(query)
            and not Path(query).expanduser().is_file()
        ):
            raise BadArgumentError(
                f"{query[:200]!r} is a key in {searches.where}; a box crops an image, so pass an image file"
            )
        return _Resolved(searches.embed(query, box), None)
    if not isinstance(query, (str, KeyQuery)) and not is_vector(query):
        return _Resolved(searches.embed(query, None), None)
    return None


def _resolved(searches: Searches, view: View[Any], query: Query) -> _Resolved[Any]:
    """A query string is a key first and a file second; a `KeyQuery` is only ever a key."""
    key = query.key if isinstance(query, KeyQuery) else query if isinstance(query, str) else None
    if key is not None:
        found = view.stored(key) if len(key) <= LONGEST_KEY else None
        if found is not None:
            return _Resolved(*found)
        if isinstance(query, KeyQuery):
            raise UnknownKeyError(f"no item with key {shown(key)} in {searches.where}.")
    if is_vector(query):
        return _Resolved(unit(query, searches.dim), None)  # type: ignore[arg-type]
    if query == "":  # Path("") is the current directory, not an image
        raise BadArgumentError("the query is empty: give a catalog key or an image file")
    if isinstance(query, str):
        try:
            exists = Path(query).expanduser().exists()
        except (OSError, ValueError):
            exists = False
        if not exists:
            raise CatalogError(f"{shown(query)} is neither a key in {searches.where} nor an image file.")
    return _Resolved(searches.embed(query, None), None)


def _distinct(
    view: View[Id], vector: np.ndarray, request: Request, exclude: list[Id]
) -> tuple[list[Id], np.ndarray]:
    """k hits, one per group (of near-duplicates, then of products): more candidates asked for,
    and every hit whose group already showed up dropped. The groups of the excluded items (a "more
    like this" query) count as shown: copies of the item itself are not more like it. On exact
    search this is exactly an exact search followed by a group-by: a group's first hit is its best."""
    k = request.k
    shown_groups = view.groups(exclude, request.collapse, request.grouped)
    wanted = min(2 * k + COLLAPSE_EXTRA, max(view.widest, 1))
    while True:
        ids, distances = view.nearest(vector, wanted, exclude)
        kept = np.arange(len(ids))
        for group_of, already in zip(view.groups(ids, request.collapse, request.grouped), shown_groups):
            kept = kept[first_of_each_group(group_of[kept], already)]
        kept = kept[:k]
        if len(kept) >= k or len(ids) < wanted or wanted >= view.widest:
            return [ids[i] for i in kept.tolist()], distances[kept]
        wanted = min(wanted * 4, view.widest)


def first_of_each_group(group_of: np.ndarray, shown_groups: np.ndarray) -> np.ndarray:
    """Positions of the hits (best first) left once every hit whose group already showed up, here
    or in ``shown_groups``, is dropped; group -1 is a group of one."""
    seen = set(shown_groups.tolist()) - {-1}
    kept: list[int] = []
    for position, group in enumerate(group_of.tolist()):
        if group >= 0:
            if group in seen:
                continue
            seen.add(group)
        kept.append(position)
    return np.asarray(kept, np.int64)
