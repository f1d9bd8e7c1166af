"""The local directory catalog as a `backend.Backend`: the seam's methods over `core.CatalogCore`.

Jobs written once above the seam (folder indexing...) reach a local catalog through this;
near-duplicates take the faster way in, `local_duplicates` on the core in place. It adds no
storage of its own: items, vectors, the graph, removed keys and feed owners stay where
`CatalogCore` keeps them, every write goes through `CatalogCore.write` (the finite unit-vector
gate, the flock, the change log), and `top_k` is the local planner (`search.search`) on a
filter's mask, so answers equal `Catalog.search`'s.

Where the two backends differ, the differences are the local catalog's own strengths:
``ef`` is ignored (the graph's breadth is the catalog's recorded ``hnsw.ef``, set with
`Catalog.set_ef`, which is what callers pass anyway), a filter on a field no item has is a clear
error (as for `Catalog.search`), feed owners are recorded for items held only, and a key removed
by hand keeps the metadata it had (restored when it is indexed back).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..json_values import storable
from . import search as planner
from .backend import Neighbour
from .core import CatalogCore
from .matches import Matches
from .store import Item, NewItem

if TYPE_CHECKING:
    from .backend import Backend
    from .reading import CatalogReader

ITERATE_READ = 10_000  # items read from SQLite per round of `iterate`


def _row(item: Item) -> dict[str, Any]:
    return {"path": item.path, "size": item.size, "mtime_ns": item.mtime_ns, "metadata": dict(item.metadata)}


def _neighbours(items: Mapping[int, Item], labels: np.ndarray, distances: np.ndarray) -> list[Neighbour]:
    """Hits by key; a damaged stored vector (a non-finite distance) ranks nowhere."""
    return [
        Neighbour(items[label].key, max(float(d), 0.0))
        for label, d in zip(labels.tolist(), distances.tolist())
        if label in items and np.isfinite(d)
    ]


class LocalBackend:
    """An open local catalog's storage, seen through the seam (see the module's docstring)."""

    def __init__(self, core: CatalogCore, *, owns: bool = True) -> None:
        self.core = core
        self._closed = not owns  # closing a borrowed core is its catalog's business

    @classmethod
    def of(cls, catalog: CatalogReader) -> LocalBackend:
        """The backend of an open local `Catalog` (sharing its core: no second open; closing
        the catalog, not this, releases it)."""
        return cls(catalog._core, owns=False)

    def describe(self) -> str:
        return str(self.core.root)

    # -- settings ---------------------------------------------------------------------------------

    def settings(self) -> dict[str, str]:
        return self.core.store.settings()

    def set_settings(self, values: Mapping[str, str]) -> None:
        self.core.set_settings({str(name): str(value) for name, value in values.items()})

    # -- writing ----------------------------------------------------------------------------------

    def write(self, items: Sequence[NewItem]) -> None:
        if items:
            self.core.write(list(items))

    def remove(self, keys: Sequence[str]) -> list[str]:
        keys = [key for key in dict.fromkeys(keys) if isinstance(key, str)]
        present = self.core.store.items_by_key(keys)
        if present:
            self.core.write([], list(present))
        return [key for key in keys if key in present]

    def remember_removed(self, keys: Sequence[str]) -> None:
        """Kept with the metadata of the items held (restored by ``readd_removed``)."""
        if not keys:
            return
        held = self.core.store.items_by_key(list(keys))
        with self.core.writing():
            self.core.store.remember_removed(list(keys), {k: item.metadata for k, item in held.items()})

    def forget_removed(self, keys: Sequence[str]) -> None:
        if not keys or not self.core.store.removed_among(list(keys)):
            return  # the usual case, a catalog nobody removed from by hand: no transaction
        with self.core.writing(), self.core.store.transaction() as db:
            db.executemany("DELETE FROM removed_keys WHERE key = ?", [(key,) for key in keys])

    def removed_keys(self, among: Sequence[str] | None = None) -> list[str]:
        self.core.sync()
        if among is None:
            return self.core.store.removed_keys()
        return sorted(self.core.store.removed_among(list(among)))

    def set_feed(self, keys: Sequence[str], feed: str | None) -> None:
        keys = list(dict.fromkeys(keys))
        if not keys:
            return
        with self.core.writing():
            if feed is not None:
                self.core.store.claim_for_feed(feed, keys)
                return
            with self.core.store.transaction() as db:
                db.executemany("UPDATE items SET feed = NULL WHERE key = ?", [(key,) for key in keys])

    def feed_owners(self, keys: Sequence[str]) -> dict[str, str]:
        owners = self.core.store.feed_owners(list(keys))
        return {key: feed for key, feed in owners.items() if feed is not None}

    def keys_of_feed(self, feed: str) -> list[str]:
        return self.core.store.feed_keys(feed) if feed else []

    # -- reading ----------------------------------------------------------------------------------

    def count(self) -> int:
        self.core.sync()
        return self.core.count

    def fetch(self, keys: Sequence[str], vectors: bool = False) -> dict[str, tuple[dict[str, Any], Any]]:
        wanted = [key for key in keys if isinstance(key, str) and storable(key)]  # else never stored
        with self.core.consistent() as core:
            items = core.store.items_by_key(wanted)
            stored = self._vectors(core, list(items.values())) if vectors else {}
        return {key: (_row(item), stored.get(key)) for key, item in items.items()}

    @staticmethod
    def _vectors(core: CatalogCore, items: list[Item]) -> dict[str, np.ndarray]:
        if not items:
            return {}
        rows = core.vectors.read([item.label for item in items])
        return {item.key: row for item, row in zip(items, rows)}

    def iterate(
        self, wanted: Mapping[str, Any] | None = None, vectors: bool = False, batch: int = 1000
    ) -> Iterator[list[tuple[str, dict[str, Any], Any]]]:
        """In label order (the order items were written), ``batch`` at a time; the filter's mask
        is taken once, at the start (items written meanwhile are seen only if they pass it)."""
        batch = max(1, int(batch))
        mask = None
        if wanted:
            with self.core.consistent() as core:
                mask = core.columns.mask(wanted, core.live_mask())
        out: list[tuple[str, dict[str, Any], Any]] = []
        pending: list[Item] = []
        for item in self.core.store.iter_items(ITERATE_READ):
            if mask is not None and (item.label >= len(mask) or not mask[item.label]):
                continue
            pending.append(item)
            if len(pending) >= batch:
                out = self._batch(pending, vectors)
                pending = []
                yield out
        if pending:
            yield self._batch(pending, vectors)

    def _batch(self, items: list[Item], vectors: bool) -> list[tuple[str, dict[str, Any], Any]]:
        stored = self._vectors(self.core, items) if vectors else {}
        return [(item.key, _row(item), stored.get(item.key)) for item in items]

    def keys_with_field(self, field: str, values: Sequence[str]) -> list[str]:
        if not values:
            return []
        with self.core.consistent() as core:
            if field not in core.columns.field_names():
                return []
            labels = np.flatnonzero(core.columns.mask({field: list(values)}, core.live_mask()))
            items = core.store.items_by_label(labels.tolist())
        return sorted(item.key for item in items.values())

    def top_k(
        self, vector: np.ndarray, k: int, wanted: Mapping[str, Any] | None, exclude: Sequence[str], ef: int
    ) -> list[Neighbour]:
        """The local planner's answer (see `search`): the graph, or exact among a filter's matches."""
        query = np.asarray(vector, np.float32)
        with self.core.consistent() as core:
            held = core.store.items_by_key([key for key in exclude if isinstance(key, str)])
            excluded = np.asarray(sorted(item.label for item in held.values()), np.int64)
            allowed = None
            if wanted:
                allowed = Matches(core.columns.mask(wanted, core.live_mask())).without(excluded)
            labels, distances = planner.search(core, query, int(k), excluded, allowed)
            return _neighbours(core.store.items_by_label(labels.tolist()), labels, distances)

    def top_k_many(self, vectors: np.ndarray, k: int, ef: int) -> list[list[Neighbour]]:
        """One graph call for all of them (hnswlib's threads); a reduced graph's hits are
        re-ranked one query at a time by the planner."""
        queries = np.asarray(vectors, np.float32)
        with self.core.consistent() as core:
            if core.reduction is not None or core.graph.index is None:
                none = np.zeros(0, np.int64)
                found = [planner.search(core, query, int(k), none, None) for query in queries]
            else:
                labels, distances = core.graph.index.search(queries, int(k), core.count)
                found = [(row[row >= 0], far[row >= 0]) for row, far in zip(labels, distances)]
            wanted = np.concatenate([labels for labels, _ in found]) if found else np.zeros(0, np.int64)
            items = core.store.items_by_label(np.unique(wanted).tolist())
            return [_neighbours(items, labels, distances) for labels, distances in found]

    # -- the catalog as a whole -------------------------------------------------------------------

    def flush(self) -> None:
        """Save the graph (the local counterpart of sealing: a reopen need not catch up)."""
        self.core.save()

    def drop(self) -> None:
        self._closed = False
        self.close()
        shutil.rmtree(self.core.root, ignore_errors=True)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.core.close()


def as_backend(core: CatalogCore) -> Backend:
    """A local catalog's core behind the seam (typed: mypy checks `LocalBackend` is a `Backend`)."""
    return LocalBackend(core)
