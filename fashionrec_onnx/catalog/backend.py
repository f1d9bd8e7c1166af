"""The storage seam: what a catalog needs from where its items and vectors live.

A backend stores items (key, unit vector, path, file size and mtime, metadata, owning feed),
answers top-k with a metadata filter, fetches by key, iterates, counts, remembers keys removed
by hand and which feed owns an item, and keeps the catalog's settings (model fingerprint,
dimension, product field...). Two implement it: `local_backend.LocalBackend`, over the local
directory catalog's core (SQLite + vector file + HNSW graph, with its own planner tuned for one
machine), and `milvus_backend.MilvusBackend`, on a Milvus collection. `tests/test_backend_contract.py`
asserts the same behaviour of both.

Above the seam, written once for both: folder indexing (`feeds.folders`, whose `LocalTarget`
keeps what a local catalog does in place: thumbnails, re-pathing moved files, graph saves), and
near-duplicates (`duplicates`: candidate pairs, similarities, pixel and threshold judging,
components, groups, the report), fed by a `duplicates.Source` per backend:
`remote_duplicates.BackendSource` over this interface (`iterate`, `top_k_many`, `fetch`), and
`local_duplicates.LocalSource` over a local catalog's core in place (its graph searched a block at
a time on every core, its thumbnail cache); and the searches (`answering`: the request checked,
queries resolved, positives and negatives combined, whole products left out, near-duplicates
collapsed and products grouped), fed by an `answering.Searches` per backend:
`remote_search.RemoteSearches` over this interface, `local_search.LocalSearches` over a local
catalog's core in place (its snapshot under the read lock, its planner, label-indexed masks and
product codes). `remote.RemoteCatalog` is the `Catalog` API over this interface; a local
`Catalog`'s maintenance (`check`, `verify`, `reduce`, `rebuild`) runs on its core directly.

Keys are the identity (no integer labels cross the seam). Filters are the `Catalog` mapping form
(field -> value or list of values); a callable filter is applied above the seam.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from .store import NewItem

NO_LABEL = -1  # a remote item has a key, not a label


@dataclass(frozen=True)
class Neighbour:
    key: str
    distance: float  # squared L2


class Backend(Protocol):
    """A catalog's storage. Writes are upserts by key; every read sees this process's writes."""

    def describe(self) -> str:
        """Where the catalog lives, fit for a message (never a password)."""

    def settings(self) -> dict[str, str]:
        """Every recorded setting."""

    def set_settings(self, values: Mapping[str, str]) -> None:
        """Record settings (other processes see them at their next read)."""

    def write(self, items: Sequence[NewItem]) -> None:
        """Add or replace items by key, each owned by its ``feed`` (None: by no feed), and no
        longer removed by hand. Metadata that cannot be stored is refused before anything is."""

    def remove(self, keys: Sequence[str]) -> list[str]:
        """Remove items (and their owners); returns the keys that were there, once each."""

    def top_k(
        self, vector: np.ndarray, k: int, wanted: Mapping[str, Any] | None, exclude: Sequence[str], ef: int
    ) -> list[Neighbour]:
        """The k nearest items (approximate), nearest first, passing the filter, not excluded."""

    def top_k_many(self, vectors: np.ndarray, k: int, ef: int) -> list[list[Neighbour]]:
        """`top_k` of each of several vectors, unfiltered (checks, near-duplicates: at most k each,
        the vector's own item among them when it is held)."""

    def fetch(self, keys: Sequence[str], vectors: bool = False) -> dict[str, tuple[dict[str, Any], Any]]:
        """``key -> (row, vector or None)`` for the keys held; a row has path, size, mtime_ns,
        metadata."""

    def iterate(
        self, wanted: Mapping[str, Any] | None = None, vectors: bool = False, batch: int = 1000
    ) -> Iterator[list[tuple[str, dict[str, Any], Any]]]:
        """Every item passing the filter, in batches of ``(key, row, vector or None)``."""

    def count(self) -> int:
        """How many items are held."""

    def keys_with_field(self, field: str, values: Sequence[str]) -> list[str]:
        """Keys of the items whose metadata ``field`` is one of ``values``."""

    def remember_removed(self, keys: Sequence[str]) -> None:
        """Keys removed by hand, kept out of later folder indexing (see `removals`)."""

    def forget_removed(self, keys: Sequence[str]) -> None:
        """Keys added again: no longer removed."""

    def removed_keys(self, among: Sequence[str] | None = None) -> list[str]:
        """Keys removed by hand (those of ``among`` only, when given)."""

    def set_feed(self, keys: Sequence[str], feed: str | None) -> None:
        """Record the feed (its key prefix) that owns these items, or (None) that none does."""

    def feed_owners(self, keys: Sequence[str]) -> dict[str, str]:
        """``key -> feed`` for the keys with an owner recorded."""

    def keys_of_feed(self, feed: str) -> list[str]:
        """Keys recorded as owned by ``feed``."""

    def flush(self) -> None:
        """Make what was written searchable through the engine's index (seal it)."""

    def drop(self) -> None:
        """Delete the whole catalog (tests and tools)."""

    def close(self) -> None:
        """Release connections."""
