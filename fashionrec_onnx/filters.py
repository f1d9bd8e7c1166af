"""Metadata filters: which items a search may return.

A dict filter (``{"category": "Dress"}``, a list value meaning any of them) is answered from an
inverted index of metadata values, so a filtered search over 200,000 items costs set operations
rather than a Python scan of every item. A callable filter is the escape hatch and is applied to
each item.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .store import Item

Filter = Mapping[str, Any] | Callable[[Item], bool]
_ANY_OF = (list, tuple, set, frozenset)


def _wanted_values(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, _ANY_OF) else [str(value)]


class MetadataIndex:
    """Labels by field and value; built once per catalog state, read by many searches at once."""

    def __init__(self, items: Iterable[Item]) -> None:
        by_field: dict[str, dict[str, set[int]]] = defaultdict(lambda: defaultdict(set))
        labels = []
        for item in items:
            labels.append(item.label)
            for name, value in item.metadata.items():
                by_field[name][str(value)].add(item.label)
        self._all = frozenset(labels)
        self._by_field = {
            name: {value: frozenset(members) for value, members in values.items()}
            for name, values in by_field.items()
        }

    def matching(self, wanted: Mapping[str, Any]) -> frozenset[int]:
        """Labels of the items that pass every condition of ``wanted``."""
        result = self._all
        for name, value in wanted.items():
            field = self._by_field.get(name, {})
            allowed = frozenset().union(*(field.get(v, frozenset()) for v in _wanted_values(value)))
            result = result & allowed
            if not result:
                break
        return result


def allowed_labels(
    filter: Filter, items: Mapping[int, Item], index: Callable[[], MetadataIndex]
) -> frozenset[int]:
    """Labels a filter lets through: from the index for a dict, by testing each item otherwise."""
    if isinstance(filter, Mapping):
        return index().matching(filter)
    return frozenset(label for label, item in items.items() if filter(item))
