"""Holding a search to its oracle, with ties in either order.

Two items at the same distance from a query (a duplicate photo, or two distances that differ in
the last bits of float32) may come back in either order, and either may be the k-th. A test that
demands one order states a fact about the day's BLAS and thread count, not about search: here a
result matches its oracle when, rank by rank, it names the same item or one at the same distance.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

# Squared-L2 distances of unit vectors closer than this are one distance: float32 sums over
# 2048 products differ by about 1e-6 with the order of summation (blocks, threads, BLAS kernel).
TIE = 1e-5


def _key(entry: Any) -> str:
    return entry if isinstance(entry, str) else entry.key


def brute_force(keys: Sequence[str], matrix: np.ndarray, query: np.ndarray) -> dict[str, float]:
    """Squared L2 from the normalised ``query`` to every row, in float64: the oracle's distances."""
    unit = np.asarray(query, np.float64) / np.linalg.norm(query)
    distances = ((np.asarray(matrix, np.float64) - unit) ** 2).sum(axis=1)
    return dict(zip(keys, distances.tolist()))


def catalog_distances(catalog: Any, query: np.ndarray) -> Callable[[str], float]:
    """Distance from the normalised ``query`` to an item's stored vector, looked up by key."""
    unit = np.asarray(query, np.float64) / np.linalg.norm(query)
    return lambda key: float(((np.asarray(catalog.vector(key), np.float64) - unit) ** 2).sum())


def assert_same_ranking(
    got: Sequence[Any],
    want: Sequence[Any],
    distance: Callable[[str], float] | Mapping[str, float] | None = None,
    tie: float = TIE,
) -> None:
    """``got`` and ``want`` (hits or keys) rank the same neighbours: at each rank the same key, or
    two keys whose distances differ by at most ``tie``. ``distance`` gives an item's distance by
    key; by default the hits' own distances are used."""
    got_keys, want_keys = [_key(e) for e in got], [_key(e) for e in want]
    assert len(got_keys) == len(want_keys), f"{len(got_keys)} results, the oracle has {len(want_keys)}"
    assert len(set(got_keys)) == len(got_keys), f"a key came back twice: {got_keys}"
    if isinstance(distance, Mapping):
        distance = distance.__getitem__
    if distance is None:
        known = {e.key: e.distance for e in [*want, *got] if not isinstance(e, str)}
        distance = known.__getitem__
    for rank, (a, b) in enumerate(zip(got_keys, want_keys), start=1):
        if a != b:
            da, db = distance(a), distance(b)
            assert abs(da - db) <= tie, (
                f"rank {rank}: {a} (distance {da:.7f}) where the oracle has {b} ({db:.7f}), not a tie; "
                f"got {got_keys}, oracle {want_keys}"
            )


def assert_true_top_k(got: Sequence[Any], distances: Mapping[str, float], k: int, tie: float = TIE) -> None:
    """``got`` is a k-nearest list by the oracle's ``distances`` (every candidate's), in one of the
    orders that ties allow."""
    ranked = sorted(distances, key=distances.__getitem__)[:k]
    assert_same_ranking(got, ranked, distances, tie)
