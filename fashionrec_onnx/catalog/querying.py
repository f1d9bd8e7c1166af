"""Answering a search: the query vector, one consistent state to read, the planner or the
oracle, near-duplicates collapsed, and the hits with their items.

A query string is a key first and a file second (`search`); a `KeyQuery` is only ever a key
(`more_like_this`, for remote callers). Images are embedded before any lock is taken; the rest
reads one SQLite snapshot after catching up with other processes.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..embedder import Embedder
from ..errors import BadArgumentError, CatalogError, UnknownKeyError
from ..images import Box, Source, check_box
from . import duplicates as near_duplicates
from . import oracle
from .columns import Filter, callable_mask
from .core import CatalogCore
from .duplicates import NEIGHBOURS, DuplicateReport

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
class KeyQuery:
    """A query that can only name a stored item, never a file."""

    key: str


def shown(text: str) -> str:
    """A caller's string in a message: quoted, and cut when it is long."""
    return repr(text) if len(text) <= 80 else f"{text[:60]!r}… ({len(text)} characters)"


def is_vector(value: object) -> bool:
    return isinstance(value, np.ndarray) and value.ndim == 1 and value.dtype.kind == "f"


def unit(vector: np.ndarray, dim: int) -> np.ndarray:
    vector = np.asarray(vector, dtype=np.float32).reshape(-1)
    if vector.shape != (dim,):
        raise CatalogError(f"a vector must have {dim} values, got {vector.shape[0]}")
    norm = float(np.linalg.norm(vector))
    if not np.isfinite(norm) or norm == 0:
        raise CatalogError(
            "the vector is zero or holds NaN or infinite values; it has no direction to search or store"
        )
    return vector / norm


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
    labels, distances = oracle.exact_topk(core.vectors, core.rows, mask, vector, k)
    return labels[0], distances[0]


class Querier:
    """The searches of one open catalog; ``embedder`` loads the model when an image comes."""

    def __init__(self, core: CatalogCore, embedder: Callable[[], Embedder]) -> None:
        self._core = core
        self._embedder = embedder
        self._groups: tuple[int, np.ndarray] | None = None  # (generation, label -> duplicate group)
        self._groups_lock = threading.Lock()

    def query_vector(self, query: Source | str | KeyQuery) -> tuple[np.ndarray, int | None]:
        """The vector to search with, and the label to leave out ("more like this")."""
        key = query.key if isinstance(query, KeyQuery) else query if isinstance(query, str) else None
        if key is not None:
            item = self._core.store.item_by_key(key) if len(key) <= 4096 else None
            if item is not None:
                return self._core.vectors.read([item.label])[0], item.label
            if isinstance(query, KeyQuery):
                raise UnknownKeyError(f"no item with key {shown(key)} in {self._core.root}.")
        if is_vector(query):
            return unit(query, self._core.dim), None  # type: ignore[arg-type]
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
        return self._embedder().embed_one(query, box=box)  # type: ignore[arg-type]

    @contextlib.contextmanager
    def searching(
        self, query: Source | str | KeyQuery, k: int, filter: Filter | None, box: Box | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
        """What every search starts with: the query vector, the labels to leave out and the
        filter's mask, all read from one consistent state (other processes' writes taken in)."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise BadArgumentError(f"k must be a whole number >= 1, got {k!r}")
        core = self._core
        embedded = None
        if box is not None:
            embedded = self.embed_region(query, box)
        elif not isinstance(query, (str, KeyQuery)) and not is_vector(query):
            embedded = self._embedder().embed_one(query)  # the slow part, outside every lock
        while True:
            core.sync()
            with core.rw.read(), core.store.snapshot():
                if core.store.state()[0] != core.generation:
                    continue  # a write landed between the catch-up and the snapshot
                vector, exclude = (embedded, None) if embedded is not None else self.query_vector(query)
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

    def hits(self, labels: np.ndarray, distances: np.ndarray) -> list[Hit]:
        items = self._core.store.items_by_label(labels.tolist())
        hits: list[Hit] = []
        for label, distance in zip(labels.tolist(), distances.tolist()):
            item = items.get(int(label))
            if item is None:
                continue
            d = max(float(distance), 0.0)
            hits.append(Hit(len(hits) + 1, item.key, item.path, d, 1.0 - d / 2.0, dict(item.metadata)))
        return hits

    def answer(
        self,
        method: Method,
        query: Source | str | KeyQuery,
        k: int,
        filter: Filter | None,
        box: Box | None,
        collapse_duplicates: bool,
    ) -> list[Hit]:
        """A search answered by ``method`` (the planner or the exact oracle)."""
        with self.searching(query, k, filter, box) as (vector, exclude, allowed):
            if collapse_duplicates:
                labels, distances = self._collapsed(method, vector, int(k), exclude, allowed)
            else:
                labels, distances = method(self._core, vector, int(k), exclude, allowed)
            return self.hits(labels, distances)

    def _collapsed(
        self, method: Method, vector: np.ndarray, k: int, exclude: np.ndarray, allowed: np.ndarray | None
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
