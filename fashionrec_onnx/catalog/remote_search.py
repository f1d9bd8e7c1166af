"""`RemoteSearching`: the searches of a `remote_catalog.RemoteCatalog` (Milvus), answered through
its backend: approximate ones by the engine's HNSW, exact ones and `check` by brute force over
the stored vectors streamed in batches, grouped and collapsed ones on the client."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BadArgumentError, CatalogError, UnknownKeyError
from ..images import Box, check_box
from . import products
from .backend import NO_LABEL, Backend, Neighbour
from .duplicates import NEIGHBOURS, DuplicateReport, find
from .facade import Catalog
from .maintenance import CheckReport, recall_at_k
from .oracle import squared_distances
from .querying import (
    COLLAPSE_EXTRA,
    Hit,
    KeyQuery,
    Queries,
    Query,
    combined,
    is_vector,
    several,
    shown,
    unit,
)
from .remote_duplicates import BackendSource
from .store import Item

EXACT_BATCH = 2_000
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

    def search(
        self,
        query: Queries,
        k: int = 5,
        filter: Any = None,
        *,
        box: Box | None = None,
        collapse_duplicates: bool = False,
        group_by: str | None = None,
        negative: Queries | None = None,
    ) -> list[Hit]:
        return self._answer(self._approximate, query, k, filter, box, collapse_duplicates, group_by, negative)

    def exact_search(
        self,
        query: Queries,
        k: int = 5,
        filter: Any = None,
        *,
        box: Box | None = None,
        collapse_duplicates: bool = False,
        group_by: str | None = None,
        negative: Queries | None = None,
    ) -> list[Hit]:
        return self._answer(self._exact, query, k, filter, box, collapse_duplicates, group_by, negative)

    def more_like_this(
        self,
        key: str | list[str],
        k: int = 5,
        filter: Any = None,
        *,
        collapse_duplicates: bool = False,
        group_by: str | None = None,
        negative: list[str] | None = None,
    ) -> list[Hit]:
        queries: list[Query] = [self._key_query(x) for x in ([key] if isinstance(key, str) else key)]
        unlike: list[Query] = [self._key_query(x) for x in negative or []]
        return self._answer(
            self._approximate, queries, k, filter, None, collapse_duplicates, group_by, unlike or None
        )

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

    def _query_vector(self, query: Query, box: Box | None) -> tuple[np.ndarray, str | None]:
        """The vector of one query, and the key to leave out ("more like this")."""
        if box is not None:
            check_box(box)
            if isinstance(query, KeyQuery) or is_vector(query):
                raise BadArgumentError("a box crops an image; it cannot apply to a catalog key or a vector")
            return self.embedder.embed_one(query, box=box), None
        key = query.key if isinstance(query, KeyQuery) else query if isinstance(query, str) else None
        if key is not None:
            found = self._backend.fetch([key], vectors=True) if len(key) <= 4096 else {}
            if key in found:
                return found[key][1], key
            if isinstance(query, KeyQuery):
                raise UnknownKeyError(f"no item with key {shown(key)} in {self.path}.")
            try:
                exists = Path(key).expanduser().exists()
            except (OSError, ValueError):
                exists = False
            if not exists:
                raise CatalogError(f"{shown(key)} is neither a key in {self.path} nor an image file.")
        if is_vector(query):
            return unit(query, self.dim), None  # type: ignore[arg-type]
        return self.embedder.embed_one(query), None  # type: ignore[arg-type]

    def _answer(
        self,
        method: Method,
        query: Queries,
        k: int,
        filter: Any,
        box: Box | None,
        collapse_duplicates: bool,
        group_by: str | None,
        negative: Queries | None,
    ) -> list[Hit]:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise BadArgumentError(f"k must be a whole number >= 1, got {k!r}")
        field = self.product_field
        grouped = products.checked_group_by(group_by, field)
        positives, negatives = several(query), several(negative) if negative is not None else []
        if not positives:
            raise BadArgumentError("a search needs at least one query (an image, a vector or a key)")
        if box is not None and (len(positives) > 1 or negatives):
            raise BadArgumentError("a box crops one query image; it cannot apply to several queries")
        wanted = [
            [self._query_vector(q, box) for q in positives],
            [self._query_vector(q, None) for q in negatives],
        ]
        vector = combined([v for v, _ in wanted[0]], [v for v, _ in wanted[1]])
        exclude = [key for side in wanted for _, key in side if key is not None]
        if field is not None and exclude:
            exclude = self._whole_products(exclude, field)
        condition: Mapping[str, Any] | None = None
        if callable(filter):
            method, condition = self._among(filter), None
        elif filter is not None:
            condition = dict(filter)
        copies = self._duplicate_groups() if collapse_duplicates else None
        if grouped or copies is not None:
            found = self._distinct(
                method, vector, int(k), condition, exclude, field if grouped else None, copies
            )
        else:
            found = method(vector, int(k), condition, exclude)
        return self._hits(found, vector if grouped else None, field)

    def _whole_products(self, keys: list[str], field: str) -> list[str]:
        rows = self._backend.fetch(keys)
        ids = sorted({str(row["metadata"][field]) for row, _ in rows.values() if field in row["metadata"]})
        return sorted(set(keys) | set(self._backend.keys_with_field(field, ids)))

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

    def _distinct(
        self,
        method: Method,
        vector: np.ndarray,
        k: int,
        condition: Mapping[str, Any] | None,
        exclude: list[str],
        field: str | None,
        copies: Mapping[str, int] | None = None,
    ) -> list[Neighbour]:
        """k hits, one per group: of near-duplicates (``copies``, key -> group), then of products
        (``field``); more asked for until enough are in hand. As on a local catalog, the groups
        of the excluded items (a "more like this" query) count as shown."""
        wanted = 2 * k + COLLAPSE_EXTRA
        while True:
            found = method(vector, wanted, condition, exclude)
            rows = self._backend.fetch([n.key for n in found]) if field is not None else {}
            shown_copies = {copies[key] for key in exclude if key in copies} if copies else set()
            seen: set[str] = set()
            kept: list[Neighbour] = []
            for neighbour in found:
                if copies is not None and neighbour.key in copies:
                    if copies[neighbour.key] in shown_copies:
                        continue
                    shown_copies.add(copies[neighbour.key])
                if field is not None:
                    metadata = rows[neighbour.key][0]["metadata"] if neighbour.key in rows else {}
                    product = str(metadata[field]) if field in metadata else "\x00" + neighbour.key
                    if product in seen:
                        continue
                    seen.add(product)
                kept.append(neighbour)
            if len(kept) >= k or len(found) < wanted or wanted >= 16_384:
                return kept[:k]
            wanted = min(wanted * 4, 16_384)

    def _hits(self, found: list[Neighbour], query: np.ndarray | None, field: str | None) -> list[Hit]:
        rows = self._backend.fetch([n.key for n in found])
        photos: dict[str, tuple[str, ...]] = {}
        if query is not None and field is not None:
            for neighbour in found:
                metadata = rows[neighbour.key][0]["metadata"] if neighbour.key in rows else {}
                if field not in metadata:
                    continue
                others = [
                    x
                    for x in self._backend.keys_with_field(field, [str(metadata[field])])
                    if x != neighbour.key
                ]
                if others:
                    stored = self._backend.fetch(others, vectors=True)
                    names = list(stored)
                    distances = squared_distances(query[None, :], np.stack([stored[x][1] for x in names]))[0]
                    photos[neighbour.key] = tuple(names[i] for i in np.lexsort((names, distances)))
        hits: list[Hit] = []
        for neighbour in found:
            if neighbour.key not in rows:
                continue  # removed between the search and the fetch
            row = rows[neighbour.key][0]
            d = max(neighbour.distance, 0.0)
            product = str(row["metadata"][field]) if field is not None and field in row["metadata"] else None
            hits.append(
                Hit(
                    len(hits) + 1, neighbour.key, row["path"], d, 1.0 - d / 2.0, dict(row["metadata"]),
                    product, photos.get(neighbour.key, ()),
                )
            )  # fmt: skip
        return hits

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

