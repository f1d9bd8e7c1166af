"""Near-duplicate images (the same photo re-uploaded, resized, recompressed, renamed), found
through the nearest-neighbour index: each item's few nearest neighbours, then the connected
components of the pairs judged near-duplicates. Never every pair: the cost is one index search
per item, like a `check` of the whole catalog.

Written once for both storage backends: a `Source` supplies only what differs (the stored
vectors streamed a block at a time, each vector's nearest items from its index, items and vectors
by number, where thumbnails are kept: `local_duplicates` for a local catalog's graph and files,
`remote_duplicates` for an engine behind the `backend.Backend` seam); the rules and the report
are this module's.

How similar "the same photo" is depends on the model (untrained weights make every pair of
images look alike), so embeddings alone cannot tell a copy from a look-alike. By default (no
threshold given) items whose image file can be read are judged by their pixels (`thumbnails`):
the candidate pairs are each item's index neighbours plus its nearest by canonical thumbnail
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
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ..errors import BadArgumentError
from . import thumbnails as pixels
from .pixel_pairs import same_photos
from .store import Item
from .vectors import sound_rows

log = logging.getLogger(__name__)

NEIGHBOURS = 8  # index neighbours examined per item
CALIBRATION_RATIO = 0.2  # of the median nearest-neighbour distance (squared L2): see the module doc
PAIRWISE_MAX = 64  # groups up to this size list every pair; larger ones the pairs that linked them
_CONFIRM_BLOCK = 16384  # candidate pairs whose thumbnails are held and compared at a time
_SIMILARITY_BLOCK = 4096  # pairs whose vectors are read at a time


class Source(Protocol):
    """What one backend supplies to the near-duplicate pass. Items are numbered (labels, from 0
    to below `size`); the numbering is the source's and lasts one pass."""

    @property
    def where(self) -> str:
        """Where the vectors live, fit for a message."""

    @property
    def size(self) -> int:
        """Every label handed out so far is below this."""

    def stream(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(labels, stored vectors)`` of every item held, a block at a time, each item once."""

    def nearest(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Each vector's ``k`` nearest items from the index: ``(labels, squared L2 distances)``,
        ``(len(vectors), k)``, distances in the full stored space, label -1 where fewer."""

    def items(self, labels: Sequence[int]) -> Mapping[int, Item]:
        """The items of ``labels`` (key, image path, its recorded size and time)."""

    def vectors(self, labels: Sequence[int]) -> np.ndarray:
        """The stored vectors of ``labels``, rows in order (NaN for an item no longer held)."""

    def thumbnails(self) -> AbstractContextManager[pixels.Thumbnails]:
        """Where thumbnails are kept while pixels are judged."""


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
    """Each item's index neighbours as candidate pairs, similarities in the full stored space."""

    first: np.ndarray  # labels
    second: np.ndarray
    similarity: np.ndarray
    nearest: np.ndarray  # each searched item's similarity to its nearest other item
    searched: np.ndarray  # labels of the items searched: those held whose stored vector is sound
    rotten: np.ndarray  # labels of items whose stored vector is not (left out of every pair)
    size: int  # every label is below this

    @property
    def items(self) -> int:
        return len(self.searched)


def neighbour_pairs(source: Source, neighbours: int) -> Neighbours:
    """One index search per item held, a block at a time."""
    firsts, seconds, sims, nearest, searched, rotten = [], [], [], [], [], []
    for labels, block in source.stream():
        sound = sound_rows(block)  # a damaged stored vector (NaN, zeros) is in no pair
        rotten.append(labels[~sound])
        labels, block = labels[sound], block[sound]
        searched.append(labels)
        if not len(labels):
            continue
        found, distances = source.nearest(block, neighbours + 1)
        first = np.broadcast_to(labels[:, None], found.shape)
        similarity = 1.0 - np.maximum(distances, 0.0) / 2.0
        keep = (found >= 0) & (found != first) & np.isfinite(similarity)  # NaN: a rotten neighbour
        firsts.append(first[keep])
        seconds.append(found[keep])
        sims.append(similarity[keep])
        masked = np.where(keep, similarity, -np.inf)
        nearest.append(masked.max(axis=1)[keep.any(axis=1)])
    bad = _joined(rotten)
    if len(bad):
        first_key = next(iter(source.items(bad[:1].tolist()).values())).key
        log.warning(
            "%s: left %d item(s) whose stored vector is damaged out of the duplicates (first: %r); "
            "`fashionrec verify` counts them: remove them and index their images again",
            source.where, len(bad), first_key,
        )  # fmt: skip
    first, second = _joined(firsts), _joined(seconds)
    keep = ~np.isin(second, bad)  # the index may still hold a sound copy of a rotten item
    return Neighbours(
        first[keep],
        second[keep],
        _joined(sims, np.float32)[keep],
        _joined(nearest, np.float32),
        _joined(searched),
        bad,
        source.size,
    )


def _joined(parts: list[np.ndarray], dtype: type = np.int64) -> np.ndarray:
    return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype)


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


def find(source: Source, threshold: float | None, neighbours: int) -> tuple[DuplicateReport, np.ndarray]:
    """Groups of near-duplicates, largest first, and each label's group number (-1 outside every
    group, for collapsing searches). A local source's caller holds the catalog's read lock."""
    validated(threshold, neighbours)
    started = time.perf_counter()
    found = neighbour_pairs(source, neighbours)
    used = calibrated_threshold(found.nearest) if threshold is None else float(threshold)
    by_pixels = 0
    if threshold is None:
        linked, by_pixels = _judged_by_pixels(source, found, used, neighbours)
    else:
        above = found.similarity >= used
        linked = (found.first[above], found.second[above], found.similarity[above])
    group_of = components(linked[0], linked[1], found.size)
    members: dict[int, list[int]] = {}
    for label in np.flatnonzero(group_of >= 0).tolist():
        members.setdefault(int(group_of[label]), []).append(label)
    groups = [_group(source, labels, linked) for labels in members.values()]
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
    source: Source, found: Neighbours, threshold: float, neighbours: int
) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], int]:
    """The near-duplicate pairs (first, second, embedding similarity): pairs of items with
    thumbnails by the `thumbnails` rule, candidates from the index and from the thumbnails'
    own nearest neighbours; pairs touching an item without one by the embedding ``threshold``.
    Returns them and how many items had a thumbnail."""
    items = source.items(found.searched.tolist())
    with source.thumbnails() as thumbnails, thumbnails.signals(list(items.values())) as signals:
        has = np.zeros(found.size, bool)
        has[signals.labels] = True
        either = ~(has[found.first] & has[found.second])
        fallback = either & (found.similarity >= threshold)
        first, second = [found.first[fallback]], [found.second[fallback]]
        if len(signals.labels) >= 2:
            pairs = compared_pairs(
                found.size, found.first[~either], found.second[~either], signals, neighbours
            )
            keep = confirmed(pairs, signals)
            log.debug("%d candidate pairs compared by pixels, %d are one photo", len(pairs), int(keep.sum()))
            pairs = pairs[keep]
            first.append(pairs[:, 0])
            second.append(pairs[:, 1])
    a, b = np.concatenate(first), np.concatenate(second)
    return (a, b, _similarities(source, np.stack([a, b], axis=1))), len(signals.labels)


def compared_pairs(
    size: int, index_a: np.ndarray, index_b: np.ndarray, signals: pixels.Signals, neighbours: int
) -> np.ndarray:
    """The candidate pairs (index neighbours, and descriptor neighbours) worth comparing by
    pixels, ``(n, 2)`` labels (below ``size``), each pair once."""
    near_a, near_b = _descriptor_pairs(signals.labels, signals.descriptors, neighbours)
    a, b = np.concatenate([index_a, near_a]), np.concatenate([index_b, near_b])
    pairs = np.unique(np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1), axis=0)
    row = np.full(size, -1, np.int64)
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


def _similarities(source: Source, pairs: np.ndarray) -> np.ndarray:
    """Embedding similarity of each pair (full stored vectors), in blocks: each item's vector
    read once per block."""
    out = np.zeros(len(pairs), np.float32)
    for start in range(0, len(pairs), _SIMILARITY_BLOCK):
        block = pairs[start : start + _SIMILARITY_BLOCK]
        labels, at = np.unique(block, return_inverse=True)
        rows = source.vectors(labels.tolist())
        at = at.reshape(block.shape)
        out[start : start + len(block)] = np.einsum("ij,ij->i", rows[at[:, 0]], rows[at[:, 1]])
    return out


def _group(
    source: Source, labels: list[int], linked: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> DuplicateGroup:
    """One group: every pair's similarity from the stored vectors, or for a large group the pairs
    that linked it. A member no longer held (a remote item removed meanwhile) is left out."""
    items = source.items(labels)
    labels = sorted((label for label in labels if label in items), key=lambda label: items[label].key)
    if len(labels) <= PAIRWISE_MAX:
        vectors = source.vectors(labels)
        held = np.isfinite(vectors).all(axis=1)
        labels, vectors = [label for label, ok in zip(labels, held.tolist()) if ok], vectors[held]
        keys = tuple(items[label].key for label in labels)
        similarity = np.clip(vectors @ vectors.T, -1.0, 1.0)
        pairs = [
            (keys[i], keys[j], float(similarity[i, j]))
            for i in range(len(keys))
            for j in range(i + 1, len(keys))
        ]
    else:
        keys = tuple(items[label].key for label in labels)
        first, second, sims = linked
        inside = np.isin(first, labels) & np.isin(second, labels)
        seen: dict[tuple[str, str], float] = {}
        for a, b, s in zip(first[inside].tolist(), second[inside].tolist(), sims[inside].tolist()):
            low, high = sorted((items[a].key, items[b].key))
            seen[low, high] = max(seen.get((low, high), -1.0), s)
        pairs = [(a, b, s) for (a, b), s in sorted(seen.items())]
    pairs.sort(key=lambda pair: -pair[2])
    return DuplicateGroup(keys, tuple(pairs))

