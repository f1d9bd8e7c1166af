"""Exact nearest neighbours over the vector file, a block at a time.

The library's oracle is a blocked matrix product, not scikit-learn: ``NearestNeighbors.fit``
needs every vector in one in-memory array (4 GB of float16 become 8 GB of float32 at a million
items), while blocks keep the peak at one block whatever the catalog's size. Distances are
computed the way scikit-learn's brute-force euclidean search computes them (``|q|^2 + |x|^2 -
2 q.x``, clipped at 0), so the tests can hold the two to the same answer on the same vectors.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import numpy as np

from . import kernels
from .pca import FEW
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
