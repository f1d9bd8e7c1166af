"""Exact nearest neighbours over the vector file, a block at a time.

The library's oracle is a blocked matrix product, not scikit-learn: ``NearestNeighbors.fit``
needs every vector in one in-memory array (4 GB of float16 become 8 GB of float32 at a million
items), while blocks keep the peak at one block whatever the catalog's size. Distances are
computed the way scikit-learn's brute-force euclidean search computes them (``|q|^2 + |x|^2 -
2 q.x``, clipped at 0), so the tests can hold the two to the same answer on the same vectors.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import numpy as np

from . import kernels
from .pca import FEW
from .tier import Tier
from .vectors import VectorFile

FEW_ROWS = 64  # a re-rank's candidates: a loop on this thread beats any BLAS call


def _merge(best_d: np.ndarray, best_l: np.ndarray, d: np.ndarray, labels: np.ndarray, k: int):
    """Row-wise k smallest of the running best and a new block's candidates."""
    all_d = np.concatenate([best_d, d], axis=1)
    all_l = np.concatenate([best_l, np.broadcast_to(labels, d.shape)], axis=1)
    if all_d.shape[1] > k:
        keep = np.argpartition(all_d, k - 1, axis=1)[:, :k]
        all_d = np.take_along_axis(all_d, keep, axis=1)
        all_l = np.take_along_axis(all_l, keep, axis=1)
    return all_d, all_l


def _sorted(best_d: np.ndarray, best_l: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort((best_l, best_d), axis=1) if best_d.size else np.zeros(best_d.shape, np.int64)
    return np.take_along_axis(best_l, order, axis=1), np.take_along_axis(best_d, order, axis=1)


def squared_distances(queries: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``|q|^2 + |x|^2 - 2 q.x`` for every query and row (float16 rows are converted)."""
    rows = kernels.to_float32(rows)
    squared = np.einsum("ij,ij->i", rows, rows)
    dots = np.einsum("qd,nd->qn", queries, rows) if len(rows) <= FEW_ROWS else queries @ rows.T
    d = (queries * queries).sum(axis=1)[:, None] + squared[None, :] - 2.0 * dots
    return np.maximum(d, 0.0, out=d)


def exact_topk(
    vectors: VectorFile,
    rows: int,
    allowed: np.ndarray,
    queries: np.ndarray,
    k: int,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(labels, squared distances)`` of shape (queries, min(k, allowed)), nearest first.

    ``allowed`` is a boolean mask by label (live items, narrowed by a filter or an exclusion);
    ``transform`` maps stored vectors into the space the queries are in (a PCA projection).
    Ties are broken by label, as a stable sort over rows in label order would.
    """
    queries = np.atleast_2d(np.asarray(queries, np.float32))
    k = min(k, int(allowed[:rows].sum()))
    best_d = np.zeros((len(queries), 0), np.float32)
    best_l = np.zeros((len(queries), 0), np.int64)
    if k <= 0:
        return best_l, best_d
    with kernels.one_blas_thread() if len(queries) <= FEW else contextlib.nullcontext():
        for start, block in vectors.blocks(rows, raw=True):
            keep = allowed[start : start + len(block)]
            if not keep.any():
                continue
            labels = np.arange(start, start + len(block))
            if not keep.all():
                block, labels = block[keep], labels[keep]
            if transform is not None:
                block = transform(kernels.to_float32(block))
            best_d, best_l = _merge(best_d, best_l, squared_distances(queries, block), labels, k)
    return _sorted(best_d, best_l)


def exact_among(
    vectors: VectorFile, labels: np.ndarray, query: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The same for a few sorted labels (a selective filter): only their rows are read."""
    best_d = np.zeros((1, 0), np.float32)
    best_l = np.zeros((1, 0), np.int64)
    query = np.atleast_2d(np.asarray(query, np.float32))
    with kernels.one_blas_thread():
        for start, block in vectors.gather_blocks(labels, raw=True):
            found = labels[start : start + len(block)]
            best_d, best_l = _merge(best_d, best_l, squared_distances(query, block), found, k)
    found, distances = _sorted(best_d, best_l)
    return found[0], distances[0]


# -- bounded exact search over a reduced catalog (see `tier`) --------------------------------------

# A row is read in full when its lower bound is within this of the k-th best distance: float32
# rounding in the bound and in the oracle's own distances is far below it, so no row that could
# rank (or tie) is ever skipped.
SLACK = 1e-4
FIRST = 8  # full rows read first (at least 2k), those with the smallest bounds, to find a k-th best
# Tier rows bounded or estimated at a time: their float32 codes (2 MB) stay in the core's cache
# between the conversion and the product. At 1,000,000 items, 256-d (one run each): a 1% filter's
# estimates took 1.03 ms a search in blocks of 2,048 rows, 1.59 ms in blocks of 8,192; exact
# search 143-191 ms, 252-301 ms in blocks of a 4 MB mapped block's 15,650 rows.
TIER_BLOCK_BYTES = 2 << 20
BOUNDS_HELD = 32 << 20  # lower bounds held at once (queries x rows): 128 MB of float32
# A wider tier's estimates of many candidates (a filter's matches) on the graph's coordinates
# keep this many times the rows to read, which are then estimated on all the tier's coordinates.
FINE_FACTOR = 4


def _tier_block(tier: Tier) -> int:
    """Tier rows whose float32 codes fill `TIER_BLOCK_BYTES` (2,048 at 256-d, 1,024 at 512-d)."""
    return max(256, TIER_BLOCK_BYTES // (4 * tier.dim))


def bounded_topk(
    vectors: VectorFile,
    rows: int,
    tier: Tier,
    covered: int,
    allowed: np.ndarray,
    queries: np.ndarray,
    k: int,
) -> tuple[np.ndarray, np.ndarray]:
    """What `exact_topk` returns, reading the compact tier's ``covered`` rows in full and the
    vector file only where a row's lower bound can still beat the k-th best."""
    queries = np.atleast_2d(np.asarray(queries, np.float32))
    allowed = allowed[:rows]
    labels = np.flatnonzero(allowed)
    k = min(k, len(labels))
    if k <= 0:
        return np.zeros((len(queries), 0), np.int64), np.zeros((len(queries), 0), np.float32)
    found_l = np.empty((len(queries), k), np.int64)
    found_d = np.empty((len(queries), k), np.float32)
    chunk = max(1, BOUNDS_HELD // len(labels))
    step = _tier_block(tier)
    with kernels.one_blas_thread() if len(queries) <= FEW else contextlib.nullcontext():
        for first in range(0, len(queries), chunk):
            batch = queries[first : first + chunk]
            bounds = np.zeros((len(batch), len(labels)), np.float32)  # uncovered rows: 0, always read
            position = 0
            prepared = tier.prepare(batch)
            for start, block in tier.rows.blocks(min(covered, rows), raw=True):
                keep = allowed[start : start + len(block)]
                count = int(np.count_nonzero(keep))
                picked = block if count == len(block) else block[keep]
                for offset in range(0, count, step):
                    part = picked[offset : offset + step]
                    bounds[:, position : position + len(part)] = tier.bounds(part, prepared, coarse=True)
                    position += len(part)
            for row, (query, bound) in enumerate(zip(batch, bounds)):
                found_l[first + row], found_d[first + row] = _refine(vectors, labels, bound, query, k)
    return found_l, found_d


def _tier_blocks(
    tier: Tier, labels: np.ndarray, inside: np.ndarray, gathered: np.ndarray | None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(positions, tier rows)`` of ``labels[inside]`` a block at a time: from ``gathered``
    (those rows, gathered earlier in that order) or gathered here. The tier's pages stay mapped
    (`VectorFile.take`): 10,000 scattered matches would otherwise fault 10,000 pages in again on
    every search."""
    step = _tier_block(tier)
    for start in range(0, len(inside), step):
        block = inside[start : start + step]
        rows = tier.rows.take(labels[block]) if gathered is None else gathered[start : start + step]
        yield block, rows


def bounded_among(
    vectors: VectorFile,
    tier: Tier,
    covered: int,
    labels: np.ndarray,
    query: np.ndarray,
    k: int,
    gathered: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """`exact_among` through the tier for sorted ``labels`` (a filter's matches): their tier
    rows are scanned (``gathered``: those below ``covered``, when the caller has them), few
    full rows read."""
    query = np.asarray(query, np.float32).reshape(-1)
    k = min(k, len(labels))
    if k <= 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    bounds = np.zeros(len(labels), np.float32)
    inside = np.arange(int(np.searchsorted(labels, covered)))
    with kernels.one_blas_thread():
        prepared = tier.prepare(query[None, :])
        for block, rows in _tier_blocks(tier, labels, inside, gathered):
            bounds[block] = tier.bounds(rows, prepared)[0]
        return _refine(vectors, labels, bounds, query, k)


def estimated_among(
    vectors: VectorFile,
    tier: Tier,
    covered: int,
    labels: np.ndarray,
    query: np.ndarray,
    k: int,
    reads: int,
    projected: np.ndarray | None = None,
    gathered: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest of a graph's candidates or a filter's matches in the full space, reading
    the full rows of only the ``reads`` the tier estimates nearest (`Tier.estimates`), and of
    any the tier does not cover yet. Not exact: a search's re-rank, where reading every
    candidate's row is what costs. Past `FINE_FACTOR` times ``reads`` covered candidates (a
    filter's matches), a wider tier first estimates on the graph's coordinates alone and keeps
    that many. ``projected``: the query's tier projection, when the caller has it;
    ``gathered``: the tier rows of the covered labels, in their order."""
    query = np.asarray(query, np.float32).reshape(-1)
    labels = np.asarray(labels, np.int64)
    inside = np.flatnonzero(labels < covered)
    reads += len(labels) - len(inside)  # uncovered: always read
    if len(labels) > reads:
        estimates = np.full(len(labels), -np.inf, np.float32)
        fine = FINE_FACTOR * reads
        coarse = tier.widened and len(inside) > fine
        with kernels.one_blas_thread():
            prepared = tier.prepare(query[None, :], projected)
            for block, rows in _tier_blocks(tier, labels, inside, gathered):
                estimates[block] = tier.estimates(rows, prepared, coarse)[0]
            if coarse:  # the nearest on the graph's coordinates, estimated again on them all
                kept = np.sort(np.argpartition(estimates, fine - 1)[:fine])
                kept = kept[labels[kept] < covered]
                at = np.searchsorted(inside, kept)  # their places among the covered rows
                rows = tier.rows.take(labels[kept]) if gathered is None else gathered[at]
                estimates[inside] = np.inf  # the others are not compared with finer estimates
                estimates[kept] = tier.estimates(rows, prepared)[0]
        labels = labels[np.argpartition(estimates, reads - 1)[:reads]]
    labels = np.sort(labels)  # label order: the file is read front to back
    distances = squared_distances(query[None, :], vectors.read(labels, raw=True))[0]
    order = np.lexsort((labels, distances))[:k]
    return labels[order], distances[order]


def _refine(
    vectors: VectorFile, labels: np.ndarray, bounds: np.ndarray, query: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The exact top k of ``labels``: full rows read in order of their bounds, a growing batch at
    a time, until no unread row's bound is within `SLACK` of the k-th best distance."""
    query = query[None, :]
    best_d = np.zeros((1, 0), np.float32)
    best_l = np.zeros((1, 0), np.int64)
    unread = np.ones(len(labels), bool)
    step = max(FIRST, 2 * k)
    candidates = np.arange(len(labels))
    while len(candidates):
        if len(candidates) > step:
            candidates = candidates[np.argpartition(bounds[candidates], step - 1)[:step]]
        candidates = np.sort(candidates)  # label order: the file is read front to back
        unread[candidates] = False
        picked = labels[candidates]
        rows = vectors.read(picked, raw=True)
        best_d, best_l = _merge(best_d, best_l, squared_distances(query, rows), picked, k)
        kth = float(best_d.max()) if best_d.shape[1] >= k else np.inf
        candidates = np.flatnonzero(unread & (bounds <= kth + SLACK))
        step *= 2
    found, distances = _sorted(best_d, best_l)
    return found[0], distances[0]


def bounded_within(
    vectors: VectorFile,
    rows: int,
    tier: Tier,
    covered: int,
    allowed: np.ndarray,
    queries: np.ndarray,
    k: int,
    known: np.ndarray | list[np.ndarray],
    graph_space: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """`bounded_topk` for many queries with ``known`` allowed labels each (a search's answer,
    -1 padded): the k-th best distance among them bounds the exact one from above, so one pass
    over the tier collects every row whose bound is within it, and only those rows are read.
    ``graph_space``: the queries and distances are in the graph's space (the PCA projections,
    as `exact_topk` with the PCA's transform computes them)."""
    queries = np.atleast_2d(np.asarray(queries, np.float32))
    allowed = allowed[:rows]
    k = min(k, int(allowed.sum()))
    found_l = np.zeros((len(queries), max(k, 0)), np.int64)
    found_d = np.zeros((len(queries), max(k, 0)), np.float32)
    if k <= 0:
        return found_l, found_d

    projected: dict[int, np.ndarray] = {}  # graph space: rows projected in bulk (BLAS), not one by one

    def project(labels: np.ndarray) -> None:
        wanted = np.asarray([x for x in labels.tolist() if x not in projected], np.int64)
        for start in range(0, len(wanted), 4096):
            chunk = wanted[start : start + 4096]
            projected.update(zip(chunk.tolist(), tier.graph.transform(vectors.read(chunk, raw=True))))

    def distances(query: np.ndarray, labels: np.ndarray) -> np.ndarray:
        if graph_space:
            project(labels)  # a no-op: every row asked for was projected in bulk before
            return squared_distances(query[None, :], np.stack([projected[x] for x in labels.tolist()]))
        return squared_distances(query[None, :], vectors.read(labels, raw=True))

    upper = np.full(len(queries), np.inf, np.float32)
    known = [labels[(labels >= 0) & (labels < rows)] for labels in known]
    known = [np.sort(labels[allowed[labels]]) for labels in known]
    if graph_space:
        project(np.unique(np.concatenate(known)))
    for row, (query, labels) in enumerate(zip(queries, known)):
        if len(labels) >= k:
            upper[row] = np.partition(distances(query, labels)[0], k - 1)[k - 1]
    unbounded = np.flatnonzero(~np.isfinite(upper))
    if len(unbounded) and graph_space:
        found_l[unbounded], found_d[unbounded] = exact_topk(
            vectors, rows, allowed, queries[unbounded], k, transform=tier.graph.transform
        )
    elif len(unbounded):
        found_l[unbounded], found_d[unbounded] = bounded_topk(
            vectors, rows, tier, covered, allowed, queries[unbounded], k
        )
    bounded = np.flatnonzero(np.isfinite(upper))
    if not len(bounded):
        return found_l, found_d
    prepared = None if graph_space else tier.prepare(queries[bounded])
    limit = upper[bounded] + SLACK
    which, where = [], []
    for start, block in tier.rows.blocks(min(covered, rows), raw=True):
        keep = allowed[start : start + len(block)]
        if not keep.any():
            continue
        labels = np.arange(start, start + len(block))
        if not keep.all():
            block, labels = block[keep], labels[keep]
        if graph_space:
            query_rows, columns = tier.within_graph_space(block, queries[bounded], limit)
        else:
            assert prepared is not None
            query_rows, columns = tier.within(block, prepared, limit)
        which.append(query_rows)
        where.append(labels[columns])
    none = np.zeros(0, np.int64)
    order = np.argsort(np.concatenate(which or [none]), kind="stable")
    candidates = np.concatenate(where or [none])[order]
    counts = np.bincount(np.concatenate(which or [none]), minlength=len(bounded))
    uncovered = np.flatnonzero(allowed[covered:]) + covered if covered < rows else none
    if graph_space:
        project(np.union1d(candidates, uncovered))
    for position, picked in enumerate(np.split(candidates, np.cumsum(counts)[:-1])):
        query = queries[bounded[position]]
        labels = np.union1d(picked, uncovered)
        best_d, best_l = _merge(
            np.zeros((1, 0), np.float32), none[None, :], distances(query, labels), labels, k
        )
        labels, best = _sorted(best_d, best_l)
        found_l[bounded[position]], found_d[bounded[position]] = labels[0], best[0]
    return found_l, found_d
