"""Retrieval metrics on plain data, shared by `Catalog.check`, the tests and the benchmarks."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def recall_at_k(approximate: np.ndarray, exact: np.ndarray, k: int) -> float:
    """Mean fraction of the exact top-k that the approximate top-k found (ids, row per query).

    Padding ids (-1) never count as found.
    """
    approximate = np.asarray(approximate)[:, :k]
    exact = np.asarray(exact)[:, :k]
    if len(exact) == 0 or exact.shape[1] == 0:
        return 1.0
    hits = [
        len(set(a[a >= 0].tolist()) & set(e[e >= 0].tolist())) / max(1, int((e >= 0).sum()))
        for a, e in zip(approximate, exact)
    ]
    return float(np.mean(hits))


def _precisions(
    query_labels: Sequence[object], retrieved_labels: Sequence[Sequence[object]], k: int
) -> list[float]:
    if len(query_labels) != len(retrieved_labels):
        raise ValueError("one row of retrieved labels per query is needed")
    return [
        sum(1 for label in retrieved[:k] if label == query) / k
        for query, retrieved in zip(query_labels, retrieved_labels)
    ]


def precision_at_k(
    query_labels: Sequence[object], retrieved_labels: Sequence[Sequence[object]], k: int
) -> float:
    """Mean fraction of the top-k results that share the query's class."""
    scores = _precisions(query_labels, retrieved_labels, k)
    return float(np.mean(scores)) if scores else 0.0


def precision_at_k_by_class(
    query_labels: Sequence[object], retrieved_labels: Sequence[Sequence[object]], k: int
) -> dict[str, float]:
    """precision@k per query class, so a weak category is not hidden by the mean."""
    by_class: dict[str, list[float]] = {}
    for query, score in zip(query_labels, _precisions(query_labels, retrieved_labels, k)):
        by_class.setdefault(str(query), []).append(score)
    return {name: float(np.mean(values)) for name, values in sorted(by_class.items())}
