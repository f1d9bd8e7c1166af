"""Indexing a folder, written once over the storage seam (`catalog.backend.Backend`) for a local
and a remote (Milvus) catalog: only new or changed files go through the model, moved files get
their new path without re-embedding, keys removed by hand stay out unless ``readd_removed``, new
metadata of unchanged files is rewritten, ``prune`` removes the items of files gone from the
folder (not a feed's). Each batch is written on its own, so a run cut short (an outage, kill -9)
resumes on re-run: what was written is unchanged and skipped, and a write by key never
duplicates. Scanned files are looked up by key in batches, never every item in memory.

A `Target` is the catalog as this job sees it: its backend, plus the few things a local catalog
does in place, better than the seam could (`LocalTarget`): thumbnails made while indexing,
moved files re-pathed without rewriting their vectors, the metadata of a removed key restored,
images already indexed under another key found by path, the items under a folder read as a
range, the graph saved every `CHECKPOINT_SECONDS`, a planned PCA reduction applied.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from ..catalog import thumbnails
from ..catalog.backend import NO_LABEL, Backend
from ..catalog.local_backend import LocalBackend
from ..catalog.reports import IndexReport as IndexReport
from ..catalog.store import Item, NewItem
from ..embedder import Failure
from ..errors import CatalogError
from .metadata_match import MetadataMatch, match_metadata
from .scan import ImageFile, Skipped, read_metadata, scan_folder

if TYPE_CHECKING:
    from ..catalog.facade import Catalog

log = logging.getLogger(__name__)

CHECKPOINT_SECONDS = 120.0


class Target:
    """A catalog through the seam alone (a remote one): every read and write is the backend's."""

    also: Callable[[Any], Any] | None = None  # made from each decoded image beside its vector

    def __init__(self, catalog: Catalog, backend: Backend) -> None:
        self.catalog = catalog
        self.backend = backend

    def known(self, keys: Sequence[str]) -> dict[str, Item]:
        """The items held under ``keys``."""
        found = self.backend.fetch(keys)
        return {
            key: Item(NO_LABEL, key, row["path"], row["size"], row["mtime_ns"], row["metadata"])
            for key, (row, _) in found.items()
        }

    def restored_metadata(self, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The metadata keys removed by hand had (none recorded here)."""
        return {}

    def keys_by_path(self, paths: Sequence[str]) -> dict[str, str]:
        """``path -> key`` of images already indexed (not known here without a scan)."""
        return {}

    def move(self, moved: dict[str, str]) -> int:
        """New paths of moved files: each item written again with its stored vector and owner."""
        found = self.backend.fetch(list(moved), vectors=True)
        owners = self.backend.feed_owners(list(found))
        self.backend.write(
            [
                NewItem(
                    key, vector, moved[key], row["size"], row["mtime_ns"], row["metadata"], owners.get(key)
                )
                for key, (row, vector) in found.items()
            ]
        )
        return len(found)

    def under(self, root: Path) -> list[tuple[str, str]]:
        """``(key, path)`` of the items whose file lies below ``root``."""
        prefix = str(root).rstrip("/") + "/"
        return [
            (key, row["path"])
            for batch in self.backend.iterate()
            for key, row, _ in batch
            if row["path"] and row["path"].startswith(prefix)
        ]

    def wrote(self, new: list[NewItem], extras: list[Any]) -> None:
        """After each batch written."""

    def checkpoint(self) -> None:
        """Every `CHECKPOINT_SECONDS` of a long run."""

    def finish(self, changed: bool) -> None:
        """At the end: sealed, so the engine indexes the new items now."""
        if changed:
            self.catalog.save()


class LocalTarget(Target):
    """A local catalog: the seam for what it does as well, its core for the rest (see above)."""

    also = staticmethod(thumbnails.made)

    def __init__(self, catalog: Catalog) -> None:
        super().__init__(catalog, LocalBackend.of(catalog))
        self.core = catalog._core

    def known(self, keys: Sequence[str]) -> dict[str, Item]:
        self.core.sync()
        return self.core.store.items_by_key(keys)

    def restored_metadata(self, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        return self.core.store.removed_metadata(keys)

    def keys_by_path(self, paths: Sequence[str]) -> dict[str, str]:
        return self.core.store.keys_by_path(paths)

    def move(self, moved: dict[str, str]) -> int:
        return self.core.rewrite(lambda: self.core.store.update_paths(moved))

    def under(self, root: Path) -> list[tuple[str, str]]:
        return self.core.store.items_under(str(root))

    def wrote(self, new: list[NewItem], extras: list[Any]) -> None:
        thumbnails.keep_indexed(self.core, dict(zip((n.key for n in new), extras)))
        self.catalog._reduce_when_planned()

    def checkpoint(self) -> None:
        self.catalog.save()

    def finish(self, changed: bool) -> None:
        self.catalog.save()


def _unchanged(item: Item | None, file: ImageFile) -> bool:
    return (
        item is not None
        and item.path == str(file.path)
        and item.size == file.size
        and item.mtime_ns == file.mtime_ns
    )


def _moved(item: Item | None, file: ImageFile) -> bool:
    """The folder was moved or renamed: the old file is gone, this one has its size and mtime."""
    return (
        item is not None
        and item.path is not None
        and item.size == file.size
        and item.mtime_ns == file.mtime_ns
        and not Path(item.path).exists()
    )


def _refuse_foreign_keys(target: Target, files: list[ImageFile], known: dict[str, Item], root: Path) -> None:
    """Keys that belong to another image (indexed from another folder, or added by hand), and
    images already indexed under another key (a folder inside one indexed before)."""
    clashes = []
    keys_by_path = target.keys_by_path([str(f.path) for f in files])
    for file in files:
        item = known.get(file.key)
        other_key = keys_by_path.get(str(file.path), file.key)
        if other_key != file.key:
            clashes.append(f"{file.path} is already indexed as {other_key!r}")
        elif item is None or item.path == str(file.path):
            continue
        elif item.path is None or (not Path(item.path).is_relative_to(root) and Path(item.path).exists()):
            clashes.append(f"{file.key!r} is {item.path or 'an item added without a file'}")
    if clashes:
        raise CatalogError(
            f"{len(clashes)} image(s) of {root} clash with what {target.catalog.path} holds "
            f"({'; '.join(clashes[:3])}). Nothing was written. Index each folder once, under "
            "its own key prefix (key_prefix=, --key-prefix NAME/), or remove the old items."
        )


def _changed_metadata(
    files: list[ImageFile], pending: set[str], known: dict[str, Item], table: Mapping[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """New metadata for unchanged images, written without re-embedding them."""
    changed: dict[str, dict[str, Any]] = {}
    for file in files:
        values = table.get(file.relative)
        item = known.get(file.key)
        if values is not None and item is not None and file.key not in pending and item.metadata != values:
            changed[file.key] = dict(values)
    return changed


def index_folder(
    catalog: Catalog,
    folder: str | os.PathLike[str],
    *,
    metadata: str | os.PathLike[str] | Mapping[str, Mapping[str, Any]] | None = None,
    prune: bool = False,
    progress: bool = True,
    batch_size: int = 32,
    key_prefix: str = "",
    readd_removed: bool = False,
) -> IndexReport:
    """`Catalog.index_folder`, of a local catalog or of one on a server (`remote.RemoteCatalog`,
    written to through its backend alone)."""
    from ..catalog.remote_catalog import RemoteCatalog

    target = Target(catalog, catalog.backend) if isinstance(catalog, RemoteCatalog) else LocalTarget(catalog)
    return index_into(target, folder, metadata, prune, progress, batch_size, key_prefix, readd_removed)


def index_into(
    target: Target,
    folder: str | os.PathLike[str],
    metadata: str | os.PathLike[str] | Mapping[str, Mapping[str, Any]] | None,
    prune: bool,
    progress: bool,
    batch_size: int,
    key_prefix: str,
    readd_removed: bool,
) -> IndexReport:
    """Index every image below ``folder`` into ``target`` (see the module's docstring)."""
    target.catalog.require_writable("indexing")
    started = time.perf_counter()
    report = IndexReport()
    rows = read_metadata(metadata) if isinstance(metadata, (str, os.PathLike)) else metadata
    root = Path(folder).expanduser().resolve()
    skipped: list[Skipped] = []
    files = list(scan_folder(root, key_prefix, on_skip=skipped.append))
    report.scanned = len(files)
    report.failures.extend(Failure(-1, key_prefix + s.relative, s.reason) for s in skipped)
    table: dict[str, dict[str, Any]] = {}
    if rows is not None:
        table, report.metadata = match_metadata(rows, [f.relative for f in files])
        _warn_metadata(report.metadata)
    present = {f.key for f in files}
    known = target.known([f.key for f in files])
    if not readd_removed:
        removed = set(target.backend.removed_keys([f.key for f in files if f.key not in known]))
        files = [f for f in files if f.key not in removed]
        report.skipped_removed = len(removed)
    else:  # back as they were: the metadata they had, unless the metadata file gives theirs
        restored = target.restored_metadata([f.key for f in files if f.key not in known])
        table = {f.relative: restored[f.key] for f in files if f.key in restored} | table
    _refuse_foreign_keys(target, files, known, root)
    todo = [file for file in files if not _unchanged(known.get(file.key), file)]
    report.unchanged = len(files) - len(todo)
    moved = {file.key: str(file.path) for file in todo if _moved(known.get(file.key), file)}
    if moved:
        report.moved = target.move(moved)
        todo = [file for file in todo if file.key not in moved]
    if table:
        changed = _changed_metadata(files, {f.key for f in todo}, known, table)
        if changed:
            report.metadata_updated = target.catalog.update_metadata(changed)
    _embed_and_write(target, todo, known, table, report, progress, batch_size)
    if prune:
        hidden = [str(root / s.relative) + "/" for s in skipped if s.folder]  # unreadable, not gone
        gone = [
            key
            for key, path in target.under(root)
            if key not in present and not any(path.startswith(folder) for folder in hidden)
        ]
        owners = target.backend.feed_owners(gone) if gone else {}
        gone = [key for key in gone if key not in owners]  # a feed's items are the feed's to remove
        if gone:
            report.removed = len(target.backend.remove(gone))
    target.finish(bool(todo or moved or report.removed or report.metadata_updated))
    report.seconds = time.perf_counter() - started
    if report.failures:
        log.warning("%d file(s) could not be indexed and were skipped", len(report.failures))
    if report.skipped_removed:
        log.info("%d file(s) skipped: their keys were removed by hand", report.skipped_removed)
    return report


def _warn_metadata(match: MetadataMatch) -> None:
    """One warning when the metadata did not fit: no row matched, or a row fits several images."""
    if match.problem:
        log.warning(
            "%d of %d metadata rows matched an image, %d fit several (given to none); rule: %s",
            match.matched_rows, match.rows, match.ambiguous_count, match.rule,
        )  # fmt: skip


def _embed_and_write(
    target: Target,
    todo: list[ImageFile],
    known: dict[str, Item],
    table: Mapping[str, dict[str, Any]],
    report: IndexReport,
    progress: bool,
    batch_size: int,
) -> None:
    last_checkpoint = time.monotonic()
    embedder = target.catalog.embedder
    with tqdm(total=len(todo), unit="img", desc="indexing", disable=not progress or not todo) as bar:
        for result in embedder.iter_batches([f.path for f in todo], batch_size=batch_size, also=target.also):
            new = []
            for row, index in enumerate(result.indices):
                file = todo[int(index)]
                previous = known.get(file.key)
                values = table.get(file.relative)
                if values is None:
                    values = previous.metadata if previous else {}
                new.append(
                    NewItem(
                        file.key, result.vectors[row], str(file.path), file.size, file.mtime_ns, dict(values)
                    )
                )
                if previous:
                    report.updated += 1
                else:
                    report.added += 1
            if new:
                target.backend.write(new)
                target.wrote(new, result.extras)
            report.failures.extend(Failure(f.index, todo[f.index].key, f.reason) for f in result.failures)
            bar.update(len(result.indices) + len(result.failures))
            if result.failures:
                bar.set_postfix(skipped=len(report.failures))
            if time.monotonic() - last_checkpoint > CHECKPOINT_SECONDS:
                target.checkpoint()
                last_checkpoint = time.monotonic()
