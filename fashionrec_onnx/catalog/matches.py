"""A filter's matches, and what searches derive from them, worked out once per catalog state.

Shops ask the same few filters (a category, "in stock") on request after request. At a million
items, building a filter's mask, listing its labels and gathering its matches' compact-tier rows
(10,000 rows scattered over 268 MB) cost more than the search among them once they are in hand,
so the last few filters' `Matches` are kept until the next write (`MatchCache`).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from typing import Any

import numpy as np

from .expressions import ANY_OF
from .tier import Tier

CACHED_FILTERS = 8  # filters whose matches are kept, the least recently used dropped first
CACHED_BYTES = 64 << 20  # and no more than this in all (masks, labels, gathered tier rows)
GATHERED_BYTES = 32 << 20  # a filter's tier rows kept gathered up to this size (60,000 rows of 512-d)
LONGEST_KEY = 4096  # characters of field names and values: a longer filter is worked out each time


class Matches:
    """The labels a filter lets through, as a mask by label; its sorted labels are worked out on
    first use and kept. Matches a `MatchCache` keeps (``grown`` set) also keep their compact-tier
    rows gathered, and tell the cache when they grow; others hand no gathered rows out (a scan
    then gathers 2,048 rows at a time, never a whole filter's at once). Never changed once made."""

    def __init__(self, mask: np.ndarray, grown: Callable[[], None] | None = None) -> None:
        self.mask = mask
        self._grown = grown
        self._lock = threading.Lock()
        self._count: int | None = None
        self._labels: np.ndarray | None = None
        self._rows: tuple[tuple[str, int], np.ndarray] | None = None

    @property
    def count(self) -> int:
        if self._labels is not None:
            return len(self._labels)
        if self._count is None:
            self._count = int(np.count_nonzero(self.mask))  # a bool sum widens every element first
        return self._count

    @property
    def labels(self) -> np.ndarray:
        """The matching labels, ascending."""
        with self._lock:
            labels = self._labels
            fresh = labels is None
            if labels is None:
                labels = self._labels = np.flatnonzero(self.mask)
        if fresh and self._grown is not None:
            self._grown()
        return labels

    def tier_rows(self, tier: Tier, covered: int) -> np.ndarray | None:
        """The tier rows of the matches below ``covered`` (the rows the tier holds), in label
        order, gathered once: a later search reads them front to back. None for matches no
        cache keeps, or when the rows would take more than `GATHERED_BYTES`."""
        if self._grown is None:
            return None
        labels = self.labels
        inside = labels[: int(np.searchsorted(labels, covered))]
        if len(inside) * tier.rows.row_bytes > GATHERED_BYTES:
            return None
        key = (str(tier.path), covered)
        with self._lock:  # another search of the same filter waits for these rows, not gathers them again
            held = self._rows
            fresh = held is None or held[0] != key
            if held is None or held[0] != key:
                held = self._rows = (key, tier.rows.take(inside))
        if fresh:
            self._grown()
        return held[1]

    def without(self, labels: np.ndarray) -> Matches:
        """These matches less some labels (a "more like this" query's own items), not kept."""
        labels = labels[labels < len(self.mask)]
        if not self.mask[labels].any():
            return self
        mask = self.mask.copy()
        mask[labels] = False
        return Matches(mask)

    @property
    def nbytes(self) -> int:
        rows = self._rows  # read without the lock: a gather in progress is counted when it is done
        held = [self.mask, self._labels, rows[1] if rows is not None else None]
        return sum(array.nbytes for array in held if array is not None)


def filter_key(wanted: Mapping[str, Any]) -> Hashable | None:
    """The same key for the same conditions however they are written (field order, a list's
    order and repeats), or None for a filter too long to be worth keeping."""
    conditions = []
    for field, value in wanted.items():
        texts = {str(v) for v in value} if isinstance(value, ANY_OF) else {str(value)}  # as `columns`
        conditions.append((str(field), tuple(sorted(texts))))
    if sum(len(field) + sum(map(len, texts)) for field, texts in conditions) > LONGEST_KEY:
        return None
    return tuple(sorted(conditions))


class MatchCache:
    """The matches of the last few filters at one catalog generation; a new generation starts
    afresh. Safe to use from many threads."""

    def __init__(self, filters: int = CACHED_FILTERS, budget: int = CACHED_BYTES) -> None:
        self._filters = filters
        self._budget = budget
        self._lock = threading.Lock()
        self._generation = -1
        self._kept: OrderedDict[Hashable, Matches] = OrderedDict()

    def get(self, generation: int, wanted: Mapping[str, Any], build: Callable[[], np.ndarray]) -> Matches:
        """The matches of ``wanted``; ``build`` makes its mask when they are not kept (its errors
        pass through and nothing is kept)."""
        key = filter_key(wanted)
        if key is None:
            return Matches(build())
        with self._lock:
            if generation != self._generation:
                self._kept.clear()
                self._generation = generation
            found = self._kept.get(key)
            if found is not None:
                self._kept.move_to_end(key)
                return found
        found = Matches(build(), grown=self._trim)
        with self._lock:
            if generation == self._generation:
                self._kept[key] = found
        self._trim()
        return found

    def __len__(self) -> int:
        return len(self._kept)

    def _trim(self) -> None:
        """Drop the least recently used until the kept fit (the most recent is always kept); on
        every new entry and whenever one grows (its labels listed, its tier rows gathered)."""
        with self._lock:
            while len(self._kept) > 1 and (
                len(self._kept) > self._filters or sum(m.nbytes for m in self._kept.values()) > self._budget
            ):
                self._kept.popitem(last=False)
