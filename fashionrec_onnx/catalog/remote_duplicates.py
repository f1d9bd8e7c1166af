"""A catalog behind the storage seam (Milvus) as the near-duplicate pass's `duplicates.Source`:
the stored vectors streamed once from the backend, each batch's nearest items asked of the
engine's own index in one batched search. Items are numbered as their keys are first seen (only
keys cross the seam); the rows seen while streaming are kept for the pixels and the groups.

Thumbnails: a remote catalog has no directory on this machine to keep them in, so the items
whose image file can be read here are judged by their pixels from thumbnails made for the pass
and kept in a temporary side file (each such image is read on every pass); the others by the
embedding threshold, as on a local catalog.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import numpy as np

from . import thumbnails as pixels
from .backend import Backend
from .store import Item

BATCH = 1_024  # items streamed, and searched, at a time


class BackendSource:
    """A backend's items for one near-duplicate pass; ``ef``: the engine index's search breadth."""

    def __init__(self, backend: Backend, ef: int) -> None:
        self.backend = backend
        self.ef = ef
        self._number: dict[str, int] = {}
        self._keys: list[str] = []  # label -> key
        self._items: dict[int, Item] = {}
        self._dim = 0

    @property
    def where(self) -> str:
        return self.backend.describe()

    @property
    def size(self) -> int:
        return len(self._number)

    def _numbered(self, key: str) -> int:
        label = self._number.setdefault(key, len(self._keys))
        if label == len(self._keys):
            self._keys.append(key)
        return label

    def stream(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for batch in self.backend.iterate(vectors=True, batch=BATCH):
            labels = np.asarray([self._numbered(key) for key, _, _ in batch], np.int64)
            for label, (key, row, _) in zip(labels.tolist(), batch):
                self._items[label] = Item(label, key, row["path"], row["size"], row["mtime_ns"], {})
            vectors = np.stack([np.asarray(vector, np.float32) for _, _, vector in batch])
            self._dim = vectors.shape[1]
            yield labels, vectors

    def nearest(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        found = np.full((len(vectors), k), -1, np.int64)
        distances = np.full((len(vectors), k), np.inf, np.float32)
        for row, hits in enumerate(self.backend.top_k_many(vectors, k, self.ef)):
            for column, hit in enumerate(hits[:k]):
                found[row, column] = self._numbered(hit.key)
                distances[row, column] = hit.distance
        return found, distances

    def items(self, labels: Sequence[int]) -> dict[int, Item]:
        """The rows seen while streaming."""
        return {label: self._items[label] for label in labels if label in self._items}

    def vectors(self, labels: Sequence[int]) -> np.ndarray:
        """Fetched now, by key (NaN rows for keys removed since they were streamed)."""
        keys = [self._keys[label] for label in labels]
        stored = self.backend.fetch(list(dict.fromkeys(keys)), vectors=True)
        rows = np.full((len(keys), self._dim), np.nan, np.float32)
        for row, key in enumerate(keys):
            if key in stored:
                rows[row] = stored[key][1]
        return rows

    def thumbnails(self) -> AbstractContextManager[pixels.Thumbnails]:
        return _temporary_thumbnails()


@contextmanager
def _temporary_thumbnails() -> Iterator[pixels.Thumbnails]:
    """A thumbnail side file for one pass, removed after it."""
    with tempfile.TemporaryDirectory(prefix="fashionrec-thumbnails-") as folder:
        yield pixels.Thumbnails(Path(folder), readonly=False)
