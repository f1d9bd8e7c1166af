"""Near-duplicate reports on a remote catalog: the rules of `duplicates` (calibrated threshold,
connected components of close pairs, groups largest first) over a `Backend`.

Each item's few nearest neighbours come from the engine's own index, asked in batched searches
while the stored vectors are streamed once; items are numbered as their keys are first seen, so
nothing but keys crosses the seam. The cost is one search per item, as on a local catalog.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from .backend import Backend
from .duplicates import (
    PAIRWISE_MAX,
    DuplicateGroup,
    DuplicateReport,
    calibrated_threshold,
    components,
    validated,
)

log = logging.getLogger(__name__)

BATCH = 1_024  # items streamed, and searched, at a time


def find(backend: Backend, ef: int, threshold: float | None, neighbours: int) -> DuplicateReport:
    """Groups of near-duplicates among the backend's items, largest first."""
    validated(threshold, neighbours)
    started = time.perf_counter()
    number: dict[str, int] = {}
    firsts: list[int] = []
    seconds: list[int] = []
    sims: list[float] = []
    nearest: list[float] = []
    items = 0

    def numbered(key: str) -> int:
        return number.setdefault(key, len(number))

    for batch in backend.iterate(vectors=True, batch=BATCH):
        items += len(batch)
        found = backend.top_k_many(np.stack([vector for _, _, vector in batch]), neighbours + 1, ef)
        for (key, _, _), hits in zip(batch, found):
            me = numbered(key)
            best = -np.inf
            for hit in hits:
                if hit.key == key:
                    continue
                close = 1.0 - max(hit.distance, 0.0) / 2.0
                firsts.append(me)
                seconds.append(numbered(hit.key))
                sims.append(close)
                best = max(best, close)
            if best > -np.inf:
                nearest.append(best)
    first, second = np.asarray(firsts, np.int64), np.asarray(seconds, np.int64)
    similarity = np.asarray(sims, np.float32)
    used = calibrated_threshold(np.asarray(nearest, np.float32)) if threshold is None else float(threshold)
    above = similarity >= used
    group_of = components(first[above], second[above], len(number))
    members: dict[int, list[int]] = {}
    for label in np.flatnonzero(group_of >= 0).tolist():
        members.setdefault(int(group_of[label]), []).append(label)
    names = list(number)
    linked = (first[above], second[above], similarity[above])
    groups = [_group(backend, [names[i] for i in labels], names, linked) for labels in members.values()]
    groups = [group for group in groups if len(group) >= 2]  # items removed meanwhile
    groups.sort(key=lambda g: (-len(g), -max(s for _, _, s in g.pairs), g.keys))
    seconds_taken = time.perf_counter() - started
    log.info("%d groups of near-duplicates among %d items (threshold %.4f) in %.1fs",
             len(groups), items, used, seconds_taken)  # fmt: skip
    return DuplicateReport(groups, used, threshold is None, items, neighbours, seconds_taken)


def _group(
    backend: Backend,
    keys: list[str],
    names: list[str],
    linked: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> DuplicateGroup:
    """One group: every pair's similarity from the stored vectors, or for a large group the pairs
    that linked it."""
    stored = backend.fetch(keys, vectors=len(keys) <= PAIRWISE_MAX)
    held = tuple(sorted(key for key in keys if key in stored))
    if len(keys) <= PAIRWISE_MAX:
        vectors = np.stack([stored[key][1] for key in held]) if held else np.zeros((0, 1), np.float32)
        similarity = np.clip(vectors @ vectors.T, -1.0, 1.0)
        pairs = [
            (held[i], held[j], float(similarity[i, j]))
            for i in range(len(held))
            for j in range(i + 1, len(held))
        ]
    else:
        inside = set(held)
        seen: dict[tuple[str, str], float] = {}
        for a, b, s in zip(*(column.tolist() for column in linked)):
            if names[a] in inside and names[b] in inside:
                low, high = sorted((names[a], names[b]))
                seen[low, high] = max(seen.get((low, high), -1.0), s)
        pairs = [(a, b, s) for (a, b), s in sorted(seen.items())]
    pairs.sort(key=lambda pair: -pair[2])
    return DuplicateGroup(held, tuple(pairs))
