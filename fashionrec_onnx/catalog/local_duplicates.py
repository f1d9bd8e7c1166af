"""A local catalog's part of the near-duplicate pass (`duplicates.Source`): its graph, its vector
file and its thumbnail cache, used in place (label-indexed, the graph searched a block at a time
on every core). The rules and the report are `duplicates`'."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext

import numpy as np

from . import thumbnails as pixels
from .core import CatalogCore
from .store import Item

BLOCK = 1024  # items searched per graph call


class LocalSource:
    """An open local catalog's items, numbered by their labels. The caller holds the catalog's
    read lock for the whole pass."""

    def __init__(self, core: CatalogCore) -> None:
        self.core = core

    @property
    def where(self) -> str:
        return str(self.core.vectors.path)

    @property
    def size(self) -> int:
        return self.core.rows

    def stream(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        live = self.core.liveness.labels()
        for start, block in self.core.vectors.gather_blocks(live, BLOCK):
            yield live[start : start + len(block)], block

    def nearest(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The graph's answer; on a PCA graph the candidates re-scored with the full stored
        vectors, so similarities mean the same in every catalog."""
        core = self.core
        assert core.graph.index is not None
        found, distances = core.graph.index.search(core.to_graph(vectors), k, core.count)
        if core.reduction is not None:
            distances = self._full_distances(vectors, found)
        return found, distances

    def _full_distances(self, block: np.ndarray, found: np.ndarray) -> np.ndarray:
        """Squared distances from each item to its candidates, in the full stored space."""
        rows = self.core.vectors.read(np.where(found >= 0, found, 0).reshape(-1)).reshape(*found.shape, -1)
        squared = np.einsum("ijk,ijk->ij", rows, rows) + np.einsum("ik,ik->i", block, block)[:, None]
        distances: np.ndarray = squared - 2.0 * np.einsum("ijk,ik->ij", rows, block)
        return distances

    def items(self, labels: Sequence[int]) -> dict[int, Item]:
        return self.core.store.items_by_label(labels)

    def vectors(self, labels: Sequence[int]) -> np.ndarray:
        rows: np.ndarray = self.core.vectors.read(list(labels))
        return rows

    def thumbnails(self) -> AbstractContextManager[pixels.Thumbnails]:
        """The catalog's side file (`thumbnails.sqlite`), filled as images are indexed."""
        return nullcontext(pixels.Thumbnails(self.core.root, readonly=self.core.readonly))
