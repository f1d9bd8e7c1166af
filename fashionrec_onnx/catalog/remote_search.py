"""A remote catalog's (Milvus) side of the searches (`answering` answers them, written once for
every backend), through its `Backend`: approximate ones by the engine's HNSW, exact ones and
`check` by brute force over the stored vectors streamed in batches, near-duplicate groups found
through the engine and kept a while."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import BadArgumentError, CatalogError
from ..images import Box
from .answering import Hit
from .backend import NO_LABEL, Backend, Neighbour
from .duplicates import NEIGHBOURS, DuplicateReport, find
from .facade import Catalog
from .maintenance import CheckReport, recall_at_k
from .oracle import squared_distances
from .remote_duplicates import BackendSource
from .store import Item

EXACT_BATCH = 2_000
WIDEST = 16_384  # Milvus answers at most this many hits a search
GROUPS_SECONDS = 600.0  # how long near-duplicate groups found for collapsed searches are kept

Method = Callable[[np.ndarray, int, "Mapping[str, Any] | None", list[str]], list[Neighbour]]


def stored_item(key: str, row: Mapping[str, Any]) -> Item:
    """A backend's row as an `Item` (a remote item has no label)."""
    return Item(NO_LABEL, key, row["path"], row["size"], row["mtime_ns"], dict(row["metadata"]))


class RemoteSearching(Catalog):
    """What `RemoteCatalog` answers through its backend: searches, near-duplicates, checks."""

    _backend: Backend
    _groups: tuple[float, int, dict[str, int]] | None  # see `_duplicate_groups`

    # -- searching -----------------------------------------------------------------------------

    def _searchable(self) -> RemoteSearches:
        return RemoteSearches(self)

    def duplicates(self, threshold: float | None = None, *, neighbours: int = NEIGHBOURS) -> DuplicateReport:
        """See `Catalog.duplicates`: the same rules and report (`duplicates`), each item's
        neighbours from the engine's index in batched searches (`remote_duplicates`)."""
        report, _ = find(BackendSource(self._backend, self.params.ef), threshold, neighbours)
        if threshold is None and neighbours == NEIGHBOURS:
            self._remember_groups(report)
        return report

    def _duplicate_groups(self) -> dict[str, int]:
        """Key -> near-duplicate group at the default threshold, for collapsed searches. Found
        once (a pass over the catalog) and kept while the item count stays the same and this
        handle writes nothing, for at most `GROUPS_SECONDS` (other processes' edits that keep
        the count show after that)."""
        with self._embedder_lock:
            known = self._groups
        if known is not None:
            when, count, groups = known
            if time.monotonic() - when < GROUPS_SECONDS and count == len(self):
                return groups
        return self._remember_groups(self.duplicates())

    def _remember_groups(self, report: DuplicateReport) -> dict[str, int]:
        groups = {key: number for number, group in enumerate(report) for key in group.keys}
        with self._embedder_lock:
            self._groups = (time.monotonic(), report.items, groups)
        return groups

    def _approximate(
        self, vector: np.ndarray, k: int, condition: Mapping[str, Any] | None, exclude: list[str]
    ) -> list[Neighbour]:
        return self._backend.top_k(vector, k, condition, exclude, self.params.ef)

    def _exact(
        self, vector: np.ndarray, k: int, condition: Mapping[str, Any] | None, exclude: list[str]
    ) -> list[Neighbour]:
        keys, distances = self._exact_many(vector[None, :], k, condition, set(exclude))
        return [Neighbour(key, float(d)) for key, d in zip(keys[0], distances[0]) if key is not None]

    def _exact_many(
        self,
        queries: np.ndarray,
        k: int,
        condition: Mapping[str, Any] | None,
        exclude: set[str],
        keep: Callable[[str, dict[str, Any]], bool] | None = None,
    ) -> tuple[list[list[str | None]], np.ndarray]:
        """Exact top-k of several queries in one pass over the stored vectors, in batches."""
        best_d = np.full((len(queries), 0), np.inf, np.float32)
        best_i = np.zeros((len(queries), 0), np.int64)
        names: list[str] = []
        for batch in self._backend.iterate(condition, vectors=True, batch=EXACT_BATCH):
            rows = [
                (key, vector)
                for key, row, vector in batch
                if key not in exclude and (keep is None or keep(key, row))
            ]
            if not rows:
                continue
            ids = np.arange(len(names), len(names) + len(rows))
            names += [key for key, _ in rows]
            d = squared_distances(queries, np.stack([v for _, v in rows]))
            all_d = np.concatenate([best_d, d], axis=1)
            all_i = np.concatenate([best_i, np.broadcast_to(ids, d.shape)], axis=1)
            if all_d.shape[1] > k:
                part = np.argpartition(all_d, k - 1, axis=1)[:, :k]
                all_d, all_i = (
                    np.take_along_axis(all_d, part, axis=1),
                    np.take_along_axis(all_i, part, axis=1),
                )
            best_d, best_i = all_d, all_i
        order = np.lexsort((best_i, best_d), axis=1) if best_d.size else np.zeros(best_d.shape, np.int64)
        best_d, best_i = np.take_along_axis(best_d, order, axis=1), np.take_along_axis(best_i, order, axis=1)
        return [[names[i] for i in row] for row in best_i.tolist()], best_d

    def _among(self, predicate: Callable[[Item], bool]) -> Method:
        """A callable filter: exact search among the items it keeps (every item is read)."""

        def method(vector: np.ndarray, k: int, condition: Any, exclude: list[str]) -> list[Neighbour]:
            keys, distances = self._exact_many(
                vector[None, :],
                k,
                None,
                set(exclude),
                lambda key, row: bool(predicate(stored_item(key, row))),
            )
            return [Neighbour(key, float(d)) for key, d in zip(keys[0], distances[0]) if key is not None]

        return method

    # -- checking -------------------------------------------------------------------------------

    def check(self, k: int = 5, sample: int = 1000, seed: int = 0) -> CheckReport:
        """recall@k of the engine's index against exact KNN over the stored vectors, queried with
        the catalog's own items (each its own top hit, as on a local catalog)."""
        if sample < 1 or k < 1:
            raise BadArgumentError(f"check needs k >= 1 and sample >= 1, got k={k}, sample={sample}")
        keys = sorted(item.key for item in self.iter_items())
        if not keys:
            raise CatalogError(f"{self.path} is empty: index some images first.")
        rng = np.random.default_rng(seed)
        picks = sorted(rng.choice(len(keys), size=min(sample, len(keys)), replace=False).tolist())
        chosen = [keys[i] for i in picks]
        queries = self.vectors(chosen)
        kk = min(k, len(keys))
        exact_keys, _ = self._exact_many(queries, kk, None, set())
        approx_keys = [[n.key for n in row] for row in self._backend.top_k_many(queries, kk, self.params.ef)]
        number = {key: i for i, key in enumerate(keys)}

        def labels(rows: Sequence[Sequence[str | None]]) -> np.ndarray:
            out = np.full((len(rows), kk), -1, np.int64)
            for r, row in enumerate(rows):
                ids = [number.get(key, -1) for key in row if key is not None][:kk]
                out[r, : len(ids)] = ids
            return out

        recall = recall_at_k(labels(approx_keys), labels(exact_keys), kk)
        params = self.params
        return CheckReport(kk, len(chosen), recall, len(keys), params.ef, params.M, params.ef_construction)

    def verify(self) -> list[str]:
        """Stored vectors that are not finite unit vectors of the catalog's dimension."""
        problems = []
        for batch in self._backend.iterate(vectors=True, batch=EXACT_BATCH):
            for key, _, vector in batch:
                if vector.shape != (self.dim,) or not abs(float(np.linalg.norm(vector)) - 1.0) < 1e-3:
                    problems.append(f"{key!r}: the stored vector is not a unit vector of {self.dim} values")
        return problems



class RemoteSearches:
    """`answering.Searches` of a remote catalog."""

    def __init__(self, catalog: RemoteSearching) -> None:
        self._catalog = catalog
        self.product_field = catalog.product_field

    @property
    def where(self) -> str:
        return str(self._catalog.path)

    @property
    def dim(self) -> int:
        return self._catalog.dim

    def embed(self, image: Any, box: Box | None) -> np.ndarray:
        return self._catalog.embedder.embed_one(image, box=box)

    def is_key(self, key: str) -> bool:
        return key in self._catalog

    @contextlib.contextmanager
    def view(self, exact: bool, filter: Any) -> Iterator[RemoteView]:
        """The collection as its consistency level shows it (nothing to hold)."""
        catalog = self._catalog
        condition: Mapping[str, Any] | None = None
        method: Method = catalog._exact if exact else catalog._approximate
        if callable(filter):
            method = catalog._among(filter)
        elif filter is not None:
            condition = dict(filter)
        yield RemoteView(catalog, self.product_field, method, condition)


class RemoteView:
    """`answering.View` of a remote catalog: keys as ids."""

    widest = WIDEST

    def __init__(
        self, catalog: RemoteSearching, field: str | None, method: Method, condition: Mapping[str, Any] | None
    ) -> None:
        self._catalog = catalog
        self._backend = catalog._backend
        self._field = field
        self._method = method
        self._condition = condition
        self._product_codes: dict[str, int] = {}

    def stored(self, key: str) -> tuple[np.ndarray, str] | None:
        found = self._backend.fetch([key], vectors=True)
        return (found[key][1], key) if key in found else None

    def whole_products(self, ids: list[str]) -> list[str]:
        if self._field is None:
            return ids
        rows = self._backend.fetch(ids)
        field = self._field
        names = sorted({str(row["metadata"][field]) for row, _ in rows.values() if field in row["metadata"]})
        return sorted(set(ids) | set(self._backend.keys_with_field(field, names)))

    def nearest(self, vector: np.ndarray, wanted: int, exclude: list[str]) -> tuple[list[str], np.ndarray]:
        found = self._method(vector, wanted, self._condition, exclude)
        return [n.key for n in found], np.asarray([n.distance for n in found], np.float32)

    def groups(self, ids: list[str], duplicates: bool, products: bool) -> list[np.ndarray]:
        found: list[np.ndarray] = []
        if duplicates:
            copies = self._catalog._duplicate_groups()
            found.append(np.asarray([copies.get(key, -1) for key in ids], np.int64))
        if products:
            rows = self._backend.fetch(ids)
            names = [self._product(rows[key][0]["metadata"]) if key in rows else None for key in ids]
            codes = self._product_codes  # one number per product for the whole search
            found.append(
                np.asarray([-1 if x is None else codes.setdefault(x, len(codes)) for x in names], np.int64)
            )
        return found

    def _product(self, metadata: Mapping[str, Any]) -> str | None:
        return str(metadata[self._field]) if self._field is not None and self._field in metadata else None

    def hits(self, ids: list[str], distances: np.ndarray, query: np.ndarray | None) -> list[Hit]:
        rows = self._backend.fetch(ids)
        photos: dict[str, tuple[str, ...]] = {}
        if query is not None and self._field is not None:
            for key in ids:
                product = self._product(rows[key][0]["metadata"]) if key in rows else None
                if product is None:
                    continue
                others = [x for x in self._backend.keys_with_field(self._field, [product]) if x != key]
                if others:
                    stored = self._backend.fetch(others, vectors=True)
                    names = list(stored)
                    d = squared_distances(query[None, :], np.stack([stored[x][1] for x in names]))[0]
                    photos[key] = tuple(names[i] for i in np.lexsort((names, d)))
        hits: list[Hit] = []
        for key, distance in zip(ids, distances.tolist()):
            if key not in rows:
                continue  # removed between the search and the fetch
            row = rows[key][0]
            product = self._product(row["metadata"])
            shots = photos.get(key, ())
            hits.append(Hit.at(len(hits) + 1, key, row["path"], distance, row["metadata"], product, shots))
        return hits
