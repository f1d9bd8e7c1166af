"""Removals that stick: a key removed by hand stays out of the catalog when its folder is indexed
again, until it is asked back (``index_folder(readd_removed=True)``, `add`, `add_many`).

The store remembers such keys (`Store.remember_removed`); an insert of the key forgets it in the
same transaction. Items that went because their file went (``prune``) are not remembered: if the
file comes back, so does the item.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .core import CatalogCore


def remove(core: CatalogCore, keys: Sequence[str]) -> int:
    """Remove items by key and remember the keys that were there; returns how many went."""
    present = core.store.items_by_key(list(keys))
    if present:  # remembered first, with their metadata: see `Store.remember_removed`
        with core.writing():
            core.store.remember_removed(list(present), {key: item.metadata for key, item in present.items()})
    return len(core.write([], keys)[1])


def forget(core: CatalogCore, keys: Sequence[str]) -> int:
    """Remove items without remembering them (their files are gone: a returning file returns)."""
    return len(core.write([], keys)[1])
