"""Retrieval metrics on plain data (labels, ids, pairs), shared by `evaluate`, the tests and the
benchmarks. `recall_at_k` is `Catalog.check`'s, defined in `catalog.maintenance` and re-exported here."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from ..catalog.maintenance import recall_at_k as recall_at_k  # re-exported: Catalog.check uses it


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


def average_precision_at_k(relevant: Sequence[bool], k: int, total_relevant: int) -> float:
    """AP@k: the mean of precision@i over the ranks i <= k that hold a relevant hit, divided by
    what could be found in k hits, ``min(k, total_relevant)`` (0 when nothing is relevant)."""
    found = 0
    total = 0.0
    for rank, hit in enumerate(relevant[:k], 1):
        if hit:
            found += 1
            total += found / rank
    possible = min(k, total_relevant)
    return total / possible if possible > 0 else 0.0


@dataclass(frozen=True)
class Scores:
    """Ranking quality of one method over one set of queries.

    ``confusion[i][j]`` counts queries of label ``labels[i]`` whose first hit has ``labels[j]``
    (a hit without the label counts under ``"(none)"``).
    """

    ks: tuple[int, ...]
    queries: int
    precision: dict[int, float]
    map: dict[int, float]
    by_label: dict[str, dict[str, float]]  # label -> queries, precision@k, mAP@k
    labels: list[str]
    confusion: list[list[int]]

    def to_dict(self) -> dict[str, object]:
        return {
            "queries": self.queries,
            **{f"precision@{k}": self.precision[k] for k in self.ks},
            **{f"mAP@{k}": self.map[k] for k in self.ks},
            "by_label": self.by_label,
            "confusion": {"labels": self.labels, "counts": self.confusion},
        }


NO_LABEL = "(none)"


def score_rankings(
    query_labels: Sequence[str],
    retrieved_labels: Sequence[Sequence[str | None]],
    relevant_counts: Sequence[int],
    ks: Sequence[int],
) -> Scores:
    """precision@k and mAP@k overall and per query label, and the confusion of the first hit.

    ``retrieved_labels`` holds one ranked row per query (at least ``max(ks)`` long when that
    many items exist; missing hits count as wrong); ``relevant_counts`` how many items share
    each query's label among those it could have found (for AP's denominator).
    """
    ks = tuple(sorted(set(ks)))
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be whole numbers >= 1, got {ks}")
    if not len(query_labels) == len(retrieved_labels) == len(relevant_counts):
        raise ValueError("one row of retrieved labels and one relevant count per query are needed")
    relevant = [[label == query for label in row] for query, row in zip(query_labels, retrieved_labels)]
    precision = {k: np.asarray([sum(row[:k]) / k for row in relevant], np.float64) for k in ks}
    average = {
        k: np.asarray([average_precision_at_k(row, k, n) for row, n in zip(relevant, relevant_counts)])
        for k in ks
    }
    queries = np.asarray(query_labels, dtype=object)
    by_label: dict[str, dict[str, float]] = {}
    for label in sorted(set(query_labels)):
        mine = queries == label
        by_label[label] = {
            "queries": int(mine.sum()),
            **{f"precision@{k}": float(precision[k][mine].mean()) for k in ks},
            **{f"mAP@{k}": float(average[k][mine].mean()) for k in ks},
        }
    first = [str(row[0]) if len(row) and row[0] is not None else NO_LABEL for row in retrieved_labels]
    labels = sorted(set(query_labels)) + sorted(set(first) - set(query_labels))
    index = {label: i for i, label in enumerate(labels)}
    confusion = np.zeros((len(labels), len(labels)), np.int64)
    for query, hit in zip(query_labels, first):
        confusion[index[query], index[hit]] += 1
    empty = len(query_labels) == 0
    return Scores(
        ks,
        len(query_labels),
        {k: 0.0 if empty else float(precision[k].mean()) for k in ks},
        {k: 0.0 if empty else float(average[k].mean()) for k in ks},
        by_label,
        labels,
        confusion.tolist(),
    )


# -- near-duplicates: imagededup's measures, precision and recall of duplicate pairs ------------


Pair = tuple[str, str]


def pairs_of_groups(groups: Iterable[Iterable[str]]) -> set[Pair]:
    """Every pair of names inside each group, as sorted tuples: a group says all its members are
    duplicates of each other."""
    pairs: set[Pair] = set()
    for group in groups:
        members = sorted(set(group))
        pairs.update((a, b) for i, a in enumerate(members) for b in members[i + 1 :])
    return pairs


def group_precision_recall(groups: Iterable[Iterable[str]], truth: Iterable[Pair]) -> tuple[float, float]:
    """`pair_precision_recall` of every pair inside the found groups, counted without listing
    them (a threshold set too low makes one group of thousands: millions of pairs)."""
    group_of: dict[str, int] = {}
    found = 0
    for number, group in enumerate(groups):
        members = set(group)
        found += len(members) * (len(members) - 1) // 2
        group_of.update((name, number) for name in members)
    truth_set = {tuple(sorted(pair)) for pair in truth}
    correct = sum(1 for a, b in truth_set if a in group_of and group_of.get(b) == group_of[a])
    return (correct / found if found else 1.0), (correct / len(truth_set) if truth_set else 1.0)


def pair_precision_recall(found: Iterable[Pair], truth: Iterable[Pair]) -> tuple[float, float]:
    """Precision (found pairs that are true) and recall (true pairs found), order within a pair
    ignored. Nothing found has precision 1; nothing to find has recall 1."""
    found_set = {tuple(sorted(pair)) for pair in found}
    truth_set = {tuple(sorted(pair)) for pair in truth}
    correct = len(found_set & truth_set)
    precision = correct / len(found_set) if found_set else 1.0
    recall = correct / len(truth_set) if truth_set else 1.0
    return precision, recall
