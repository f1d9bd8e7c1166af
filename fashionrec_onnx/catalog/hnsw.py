"""The HNSW graph (hnswlib, space 'l2' on unit vectors or a reduced catalog's PCA projections)
with hnswlib's sharp edges filed off.

hnswlib forgets ``ef`` on save, raises when full, when k exceeds what it holds and on a double
delete, and is not safe when searches run during adds or deletes. This wrapper grows capacity,
clamps k, makes deletes idempotent and keeps a readers-writer lock; the catalog persists ef.
New items take the slots of deleted ones, so a catalog whose products come and go does not grow.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import hnswlib
import numpy as np

from ..errors import BadArgumentError
from . import hnsw_file

DEFAULT_M = 16
MAX_EF = 2**31 - 1  # what hnswlib takes (a larger one is its TypeError)
DEFAULT_EF_CONSTRUCTION = 200
DEFAULT_EF = 128
_GROWTH = 1.5
_MIN_CAPACITY = 1024


@dataclass(frozen=True)
class HnswParams:
    """Graph parameters: M and ef_construction fix the graph, ef trades speed for recall."""

    M: int = DEFAULT_M
    ef_construction: int = DEFAULT_EF_CONSTRUCTION
    ef: int = DEFAULT_EF

    def __post_init__(self) -> None:
        for name in ("M", "ef_construction", "ef"):  # stored as settings: 1.5 or NaN would be unreadable
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise BadArgumentError(f"{name} must be a whole number, got {value!r}")
        if not 2 <= self.M <= 256:
            raise BadArgumentError(f"M must be between 2 and 256, got {self.M}")
        if not (1 <= self.ef_construction <= MAX_EF and 1 <= self.ef <= MAX_EF):
            raise BadArgumentError(f"ef_construction and ef must be from 1 to {MAX_EF:,}")


class ReadWriteLock:
    """Many concurrent searches, or one writer: hnswlib's own rule, enforced."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._readers:
                self._cond.wait()
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


class HnswIndex:
    """A growable hnswlib index over integer labels. Callers hold the lock they need."""

    def __init__(self, dim: int, params: HnswParams, capacity: int = _MIN_CAPACITY) -> None:
        self.dim = dim
        self.params = params
        self._index = hnswlib.Index(space="l2", dim=dim)
        self._index.init_index(
            max_elements=max(capacity, _MIN_CAPACITY),
            M=params.M,
            ef_construction=params.ef_construction,
            allow_replace_deleted=True,
        )
        self._index.set_ef(params.ef)

    @classmethod
    def load(cls, path: Path, dim: int, params: HnswParams) -> HnswIndex:
        self = cls.__new__(cls)
        self.dim = dim
        self.params = params
        self._index = hnsw_file.load(path, dim)
        self._index.set_ef(params.ef)  # hnswlib does not save ef
        return self

    def save(self, path: Path) -> None:
        self._index.save_index(str(path))

    # -- contents -------------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        return int(self._index.get_max_elements())

    @property
    def slots(self) -> int:
        """Elements held, live and deleted-but-not-yet-reused: what the graph costs in memory."""
        return int(self._index.get_current_count())

    def labels(self) -> set[int]:
        """Labels the graph holds, deleted ones whose slot was not reused yet included."""
        return set(self._index.get_ids_list())

    def add(self, labels: np.ndarray, vectors: np.ndarray, threads: int = -1) -> None:
        if len(labels) == 0:
            return
        needed = self.slots + len(labels)  # as if no deleted slot were free: never too small
        if needed > self.capacity:
            self._index.resize_index(max(needed, int(self.capacity * _GROWTH)))
        self._index.add_items(
            np.ascontiguousarray(vectors, np.float32), labels, num_threads=threads, replace_deleted=True
        )

    def delete(self, labels: Iterable[int]) -> None:
        """Hide labels from results; deleting a deleted or unknown label is a no-op."""
        for label in labels:
            with contextlib.suppress(RuntimeError):  # hnswlib: "already deleted" or "not found"
                self._index.mark_deleted(int(label))

    def set_ef(self, ef: int) -> None:
        self.params = HnswParams(self.params.M, self.params.ef_construction, ef)
        self._index.set_ef(ef)

    # -- search ---------------------------------------------------------------------------

    def search(
        self,
        queries: np.ndarray,
        k: int,
        live: int,
        accept: Callable[[int], bool] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(labels, squared L2 distances)`` of shape (n, min(k, live)); -1 pads missing hits.

        ``live`` is the number of searchable items, which hnswlib cannot tell once items are
        deleted. With ``accept``, fewer than k may match: the rows are then padded.
        """
        queries = np.ascontiguousarray(np.atleast_2d(queries), np.float32)
        k = min(k, live)
        if k <= 0:
            return np.zeros((len(queries), 0), np.int64), np.zeros((len(queries), 0), np.float32)
        # hnswlib searches with max(ef, k) by itself, so k above ef needs no set_ef (which
        # would race with concurrent searches).
        try:
            labels, dists = self._index.knn_query(queries, k=k, filter=accept)
        except RuntimeError:
            # Fewer than k reachable (deletions or a selective filter): ask one by one.
            return self._search_padded(queries, k, accept)
        return labels.astype(np.int64), dists.astype(np.float32)

    def _search_padded(
        self, queries: np.ndarray, k: int, accept: Callable[[int], bool] | None
    ) -> tuple[np.ndarray, np.ndarray]:
        labels = np.full((len(queries), k), -1, np.int64)
        dists = np.full((len(queries), k), np.inf, np.float32)
        for row, query in enumerate(queries):
            for kk in range(k - 1, 0, -1):
                try:
                    found, found_d = self._index.knn_query(query[None], k=kk, filter=accept)
                except RuntimeError:
                    continue
                labels[row, :kk] = found[0]
                dists[row, :kk] = found_d[0]
                break
        return labels, dists
