"""Near-duplicate images (the same photo re-uploaded, resized, recompressed, renamed), found
through the graph: each item's few nearest neighbours, then the connected components of the
pairs at or above a similarity threshold. Never every pair: the cost is one graph search per
item, like a `check` of the whole catalog.

How similar "the same photo" is depends on the model (untrained weights make every pair of
images look alike), so embeddings alone cannot tell a copy from a look-alike. By default (no
threshold given) items whose image file can be read are judged by their pixels (`thumbnails`):
the candidate pairs are each item's graph neighbours plus its nearest by canonical thumbnail
descriptor, and a pair is a near-duplicate by the rule in `thumbnails`. Items without an image
file fall back to a threshold calibrated on the catalog itself: a pair is a near-duplicate when
its distance is under ``CALIBRATION_RATIO`` times the median distance from an item to its nearest
neighbour. An explicit threshold applies to the embeddings of every pair (the rule before
thumbnails). Collapsing search results uses the same groups, so a collapsed search never shows
two images of one group.
"""

from __future__ import annotations

import logging
import numbers
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ..errors import BadArgumentError
from . import thumbnails as pixels
from .core import CatalogCore
from .pixel_pairs import same_photos
from .vectors import sound_rows

log = logging.getLogger(__name__)

NEIGHBOURS = 8  # graph neighbours examined per item
CALIBRATION_RATIO = 0.2  # of the median nearest-neighbour distance (squared L2): see the module doc
PAIRWISE_MAX = 64  # groups up to this size list every pair; larger ones the pairs that linked them
_BLOCK = 1024  # items searched per graph call
_CONFIRM_BLOCK = 16384  # candidate pairs whose thumbnails are held and compared at a time


@dataclass(frozen=True)
class DuplicateGroup:
    """Images that are near-duplicates of each other (directly, or through a chain of pairs).

    ``pairs`` holds ``(key, other key, similarity)``: every pair of the group, or for a group
    larger than `PAIRWISE_MAX` (a threshold too low) only the pairs that linked it.
    """

    keys: tuple[str, ...]
    pairs: tuple[tuple[str, str, float], ...]

    def __len__(self) -> int:
        return len(self.keys)


@dataclass(frozen=True)
class DuplicateReport:
    """The groups found, and the threshold that found them. Iterating gives the groups."""

    groups: list[DuplicateGroup]
    threshold: float
    calibrated: bool
    items: int
    neighbours: int
    seconds: float
    by_pixels: int = 0  # items judged by their thumbnails (the rest by the embedding threshold)

    def __iter__(self) -> Iterator[DuplicateGroup]:
        return iter(self.groups)

    def __len__(self) -> int:
        return len(self.groups)


@dataclass(frozen=True)
class Neighbours:
    """Each item's graph neighbours as candidate pairs, similarities in the full stored space."""

    first: np.ndarray  # labels
    second: np.ndarray
    similarity: np.ndarray
    nearest: np.ndarray  # each searched item's similarity to its nearest other item
    items: int  # items searched: the live ones whose stored vector is sound
    rotten: np.ndarray  # labels of live items whose stored vector is not (left out of every pair)


def neighbour_pairs(core: CatalogCore, neighbours: int) -> Neighbours:
    """One graph search per live item (in blocks, on every core). On a PCA graph the candidates
    are re-scored with the full stored vectors, so similarities mean the same in every catalog.
    The caller holds the catalog's read lock."""
    assert core.graph.index is not None
    live = core.liveness.labels()
    firsts, seconds, sims, nearest, rotten = [], [], [], [], []
    for start, block in core.vectors.gather_blocks(live, _BLOCK):
        labels = live[start : start + len(block)]
        sound = sound_rows(block)  # a damaged stored vector (NaN, zeros) is in no pair
        rotten.append(labels[~sound])
        labels, block = labels[sound], block[sound]
        if not len(labels):
            continue
        found, distances = core.graph.index.search(core.to_graph(block), neighbours + 1, core.count)
        if core.reduction is not None:
            distances = _full_distances(core, block, found)
        first = np.broadcast_to(labels[:, None], found.shape)
        similarity = 1.0 - np.maximum(distances, 0.0) / 2.0
        keep = (found >= 0) & (found != first) & np.isfinite(similarity)  # NaN: a rotten neighbour
        firsts.append(first[keep])
        seconds.append(found[keep])
        sims.append(similarity[keep])
        masked = np.where(keep, similarity, -np.inf)
        nearest.append(masked.max(axis=1)[keep.any(axis=1)])
    bad = np.concatenate(rotten) if rotten else np.zeros(0, np.int64)
    if len(bad):
        first_key = next(iter(core.store.items_by_label(bad[:1].tolist()).values())).key
        log.warning(
            "%s: left %d item(s) whose stored vector is damaged out of the duplicates (first: %r); "
            "`fashionrec verify` counts them: remove them and index their images again",
            core.vectors.path, len(bad), first_key,
        )  # fmt: skip
    if not firsts:
        empty = np.zeros(0, np.int64)
        return Neighbours(
            empty, empty, np.zeros(0, np.float32), np.zeros(0, np.float32), len(live) - len(bad), bad
        )
    first, second = np.concatenate(firsts), np.concatenate(seconds)
    similarity = np.concatenate(sims).astype(np.float32)
    keep = ~np.isin(second, bad)  # the graph may still hold a sound copy of a rotten item
    return Neighbours(
        first[keep],
        second[keep],
        similarity[keep],
        np.concatenate(nearest).astype(np.float32),
        len(live) - len(bad),
        bad,
    )


def _full_distances(core: CatalogCore, block: np.ndarray, found: np.ndarray) -> np.ndarray:
    """Squared distances from each item to its candidates, in the full stored space."""
    rows = core.vectors.read(np.where(found >= 0, found, 0).reshape(-1)).reshape(*found.shape, -1)
    squared = np.einsum("ijk,ijk->ij", rows, rows) + np.einsum("ik,ik->i", block, block)[:, None]
    distances: np.ndarray = squared - 2.0 * np.einsum("ijk,ik->ij", rows, block)
    return distances


def calibrated_threshold(nearest: np.ndarray) -> float:
    """The similarity below which a pair is not a near-duplicate, from the catalog's own scale."""
    if len(nearest) == 0:
        return 1.0
    median_distance = 2.0 * (1.0 - float(np.median(nearest)))
    return 1.0 - CALIBRATION_RATIO * median_distance / 2.0


def components(first: np.ndarray, second: np.ndarray, size: int) -> np.ndarray:
    """Label -> component number over ``size`` labels, -1 for labels in no pair."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    group_of = np.full(size, -1, np.int64)
    if len(first) == 0:
        return group_of
    nodes, inverse = np.unique(np.concatenate([first, second]), return_inverse=True)
    edges = len(first)
    graph = coo_matrix((np.ones(edges), (inverse[:edges], inverse[edges:])), shape=(len(nodes), len(nodes)))
    _, component = connected_components(graph, directed=False)
    group_of[nodes] = component
    return group_of


def validated(threshold: float | None, neighbours: int) -> None:
    number = isinstance(threshold, numbers.Real) and not isinstance(threshold, bool)
    if threshold is not None and not (number and 0.0 < threshold <= 1.0):
        raise BadArgumentError(f"threshold is a similarity from 0 (excluded) to 1, got {threshold!r}")
    if isinstance(neighbours, bool) or not isinstance(neighbours, int) or neighbours < 1:
        raise BadArgumentError(f"neighbours must be a whole number >= 1, got {neighbours!r}")


def find(core: CatalogCore, threshold: float | None, neighbours: int) -> tuple[DuplicateReport, np.ndarray]:
    """Groups of near-duplicates, largest first, and each label's group number (-1 outside every
    group, for collapsing searches). The caller holds the catalog's read lock."""
    validated(threshold, neighbours)
    started = time.perf_counter()
    found = neighbour_pairs(core, neighbours)
    used = calibrated_threshold(found.nearest) if threshold is None else float(threshold)
    linked = (found.first, found.second, found.similarity)
    by_pixels = 0
    if threshold is None:
        linked, by_pixels = _judged_by_pixels(core, found, used, neighbours)
    else:
        above = found.similarity >= used
        linked = (found.first[above], found.second[above], found.similarity[above])
    group_of = components(linked[0], linked[1], core.rows)
    members: dict[int, list[int]] = {}
    for label in np.flatnonzero(group_of >= 0).tolist():
        members.setdefault(int(group_of[label]), []).append(label)
    groups = [_group(core, labels, linked) for labels in members.values()]
    groups = [group for group in groups if len(group) >= 2]  # items removed meanwhile
    groups.sort(key=lambda g: (-len(g), -max(s for _, _, s in g.pairs), g.keys))
    seconds = time.perf_counter() - started
    log.info(
        "%d groups of near-duplicates among %d items (threshold %.4f) in %.1fs",
        len(groups),
        found.items,
        used,
        seconds,
    )
    report = DuplicateReport(groups, used, threshold is None, found.items, neighbours, seconds, by_pixels)
    return report, group_of


def _judged_by_pixels(
    core: CatalogCore, found: Neighbours, threshold: float, neighbours: int
) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], int]:
    """The near-duplicate pairs (first, second, embedding similarity): pairs of items with
    thumbnails by the `thumbnails` rule, candidates from the graph and from the thumbnails'
    own nearest neighbours; pairs touching an item without one by the embedding ``threshold``.
    Returns them and how many items had a thumbnail."""
    live = np.setdiff1d(core.liveness.labels(), found.rotten)
    items = core.store.items_by_label(live.tolist())
    with pixels.Thumbnails(core.root, readonly=core.readonly).signals(list(items.values())) as signals:
        has = np.zeros(core.rows, bool)
        has[signals.labels] = True
        either = ~(has[found.first] & has[found.second])
        fallback = either & (found.similarity >= threshold)
        first, second = [found.first[fallback]], [found.second[fallback]]
        if len(signals.labels) >= 2:
            pairs = compared_pairs(core, found.first[~either], found.second[~either], signals, neighbours)
            keep = confirmed(pairs, signals)
            log.debug("%d candidate pairs compared by pixels, %d are one photo", len(pairs), int(keep.sum()))
            pairs = pairs[keep]
            first.append(pairs[:, 0])
            second.append(pairs[:, 1])
    a, b = np.concatenate(first), np.concatenate(second)
    return (a, b, _similarities(core, np.stack([a, b], axis=1))), len(signals.labels)


def compared_pairs(
    core: CatalogCore, graph_a: np.ndarray, graph_b: np.ndarray, signals: pixels.Signals, neighbours: int
) -> np.ndarray:
    """The candidate pairs (graph neighbours, and descriptor neighbours) worth comparing by
    pixels, ``(n, 2)`` labels, each pair once."""
    near_a, near_b = _descriptor_pairs(signals.labels, signals.descriptors, neighbours)
    a, b = np.concatenate([graph_a, near_a]), np.concatenate([graph_b, near_b])
    pairs = np.unique(np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1), axis=0)
    row = np.full(core.rows, -1, np.int64)
    row[signals.labels] = np.arange(len(signals.labels))
    x, y = row[pairs[:, 0]], row[pairs[:, 1]]
    canonical = np.einsum("ij,ij->i", signals.descriptors[x], signals.descriptors[y])
    selected: np.ndarray = pairs[pixels.worth_comparing(canonical, signals.sizes[x], signals.sizes[y])]
    return selected


def confirmed(pairs: np.ndarray, signals: pixels.Signals) -> np.ndarray:
    """Which of the ``(n, 2)`` label pairs are one photo by the `thumbnails` rule: their
    thumbnails fetched a block at a time and compared all at once (`pixel_pairs`)."""
    keep = np.zeros(len(pairs), bool)
    for start in range(0, len(pairs), _CONFIRM_BLOCK):
        block = pairs[start : start + _CONFIRM_BLOCK]
        labels = np.unique(block)
        thumbs = signals.pixels(labels.tolist())
        first, second = np.searchsorted(labels, block[:, 0]), np.searchsorted(labels, block[:, 1])
        keep[start : start + len(block)] = same_photos(
            [thumbs[int(label)] for label in labels], first, second
        )
    return keep


def _descriptor_pairs(
    labels: np.ndarray, descriptors: np.ndarray, neighbours: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each thumbnail's nearest thumbnails by canonical descriptor (an in-memory HNSW graph)."""
    import hnswlib

    index = hnswlib.Index(space="ip", dim=descriptors.shape[1])
    index.init_index(max_elements=len(labels), ef_construction=100, M=16, random_seed=0)
    index.add_items(descriptors, labels)
    k = min(neighbours + 1, len(labels))
    index.set_ef(max(2 * k, 32))
    found, _ = index.knn_query(descriptors, k)
    first = np.broadcast_to(labels[:, None], found.shape)
    keep = found != first
    return first[keep].astype(np.int64), found[keep].astype(np.int64)


def _similarities(core: CatalogCore, pairs: np.ndarray) -> np.ndarray:
    """Embedding similarity of each pair (full stored vectors), in blocks."""
    out = np.zeros(len(pairs), np.float32)
    for start in range(0, len(pairs), 4096):
        block = pairs[start : start + 4096]
        out[start : start + len(block)] = np.einsum(
            "ij,ij->i", core.vectors.read(block[:, 0]), core.vectors.read(block[:, 1])
        )
    return out


def _group(
    core: CatalogCore, labels: list[int], linked: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> DuplicateGroup:
    items = core.store.items_by_label(labels)
    labels = sorted((label for label in labels if label in items), key=lambda label: items[label].key)
    keys = tuple(items[label].key for label in labels)
    if len(labels) <= PAIRWISE_MAX:
        vectors = core.vectors.read(labels)
        similarity = np.clip(vectors @ vectors.T, -1.0, 1.0)
        pairs = [
            (keys[i], keys[j], float(similarity[i, j]))
            for i in range(len(keys))
            for j in range(i + 1, len(keys))
        ]
    else:
        first, second, sims = linked
        inside = np.isin(first, labels) & np.isin(second, labels)
        seen: dict[tuple[str, str], float] = {}
        for a, b, s in zip(first[inside].tolist(), second[inside].tolist(), sims[inside].tolist()):
            low, high = sorted((items[a].key, items[b].key))
            seen[low, high] = max(seen.get((low, high), -1.0), s)
        pairs = [(a, b, s) for (a, b), s in sorted(seen.items())]
    pairs.sort(key=lambda pair: -pair[2])
    return DuplicateGroup(keys, tuple(pairs))

