"""Getting products in: scanning image folders and indexing them, reading shop feeds, downloading
their images, keeping a catalog in step with a feed. Built on `catalog`, which never imports it.

Modules: `scan` (walking a folder, reading metadata files), `metadata_match` (metadata rows to
images), `folders` (`Catalog.index_folder`, local or remote), `feed` (reading a feed), `download`
(fetching and caching images), `sync` (`Catalog.sync`), `lock` (one remover at a time: a sync,
`index --prune`). Importing this package registers those jobs with the catalog (`catalog.jobs`);
`sync` and `download` are imported when a sync runs.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..catalog import jobs
from .folders import IndexReport
from .folders import index_folder as _index_folder
from .lock import catalog_home, one_remover

if TYPE_CHECKING:
    from ..catalog import Catalog
    from .sync import SyncReport


def _sync(catalog: Catalog, feed: str | os.PathLike[str], **options: Any) -> SyncReport:
    from .sync import sync_feed  # urllib and the download machinery load only when a sync runs

    return sync_feed(catalog, feed, **options)


def _pruning_under_the_lock(index: Callable[..., IndexReport]) -> Callable[..., IndexReport]:
    """``index``, which with ``prune`` holds the lock a sync holds (see `lock`): a prune removes
    what it did not see, so no sync may write items under the folder while it decides."""

    def indexing(catalog: Any, folder: str | os.PathLike[str], **options: Any) -> IndexReport:
        if not options.get("prune"):
            return index(catalog, folder, **options)
        with one_remover(catalog_home(catalog), "index --prune"):
            return index(catalog, folder, **options)

    return indexing


index_folder = _pruning_under_the_lock(_index_folder)


jobs.register("index_folder", index_folder)
jobs.register("sync", _sync)

__all__ = ["IndexReport", "index_folder"]
