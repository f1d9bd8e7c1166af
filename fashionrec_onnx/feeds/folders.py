"""Indexing a folder: only new or changed files go through the model, one transaction a batch.

Each scanned file is looked up by key (and by path) in the database in batches, so indexing a
folder into a million-item catalog never holds every item in memory.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from ..catalog import removals, thumbnails
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


def _refuse_foreign_keys(
    catalog: Catalog, files: list[ImageFile], known: dict[str, Item], root: Path
) -> None:
    """Keys that belong to another image (indexed from another folder, or added by hand), and
    images already indexed under another key (a folder inside one indexed before)."""
    clashes = []
    keys_by_path = catalog._core.store.keys_by_path([str(f.path) for f in files])
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
            f"{len(clashes)} image(s) of {root} clash with what {catalog.path} holds "
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
    metadata: str | os.PathLike[str] | Mapping[str, Mapping[str, Any]] | None,
    prune: bool,
    progress: bool,
    batch_size: int,
    key_prefix: str,
    readd_removed: bool = False,
) -> IndexReport:
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
    core = catalog._core
    core.sync()
    known = core.store.items_by_key([f.key for f in files])
    if not readd_removed:
        removed = core.store.removed_among([f.key for f in files if f.key not in known])
        files = [f for f in files if f.key not in removed]
        report.skipped_removed = len(removed)
    else:  # back as they were: the metadata they had, unless the metadata file gives theirs
        restored = core.store.removed_metadata([f.key for f in files if f.key not in known])
        table = {f.relative: restored[f.key] for f in files if f.key in restored} | table
    _refuse_foreign_keys(catalog, files, known, root)
    todo = [file for file in files if not _unchanged(known.get(file.key), file)]
    report.unchanged = len(files) - len(todo)
    moved = {file.key: str(file.path) for file in todo if _moved(known.get(file.key), file)}
    if moved:
        report.moved = core.rewrite(lambda: core.store.update_paths(moved))
        todo = [file for file in todo if file.key not in moved]
    if table:
        changed = _changed_metadata(files, {f.key for f in todo}, known, table)
        if changed:
            report.metadata_updated = core.rewrite(lambda: core.store.update_metadata(changed))
    _embed_and_write(catalog, todo, known, table, report, progress, batch_size)
    if prune:
        hidden = [str(root / s.relative) + "/" for s in skipped if s.folder]  # unreadable, not gone
        gone = [
            key
            for key, path in core.store.items_under(str(root))
            if key not in present and not any(path.startswith(folder) for folder in hidden)
        ]
        owners = catalog.feed_owners(gone) if gone else {}
        gone = [key for key in gone if owners.get(key) is None]  # a feed's items are the feed's to remove
        if gone:
            report.removed = removals.forget(core, gone)
    catalog.save()
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
    catalog: Catalog,
    todo: list[ImageFile],
    known: dict[str, Item],
    table: Mapping[str, dict[str, Any]],
    report: IndexReport,
    progress: bool,
    batch_size: int,
) -> None:
    last_checkpoint = time.monotonic()
    write: Callable[[list[NewItem]], Any] = catalog._core.write
    with tqdm(total=len(todo), unit="img", desc="indexing", disable=not progress or not todo) as bar:
        for result in catalog.embedder.iter_batches(
            [f.path for f in todo], batch_size=batch_size, also=thumbnails.made
        ):
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
                write(new)
                thumbnails.keep_indexed(catalog._core, dict(zip((n.key for n in new), result.extras)))
                catalog._reduce_when_planned()
            report.failures.extend(Failure(f.index, todo[f.index].key, f.reason) for f in result.failures)
            bar.update(len(result.indices) + len(result.failures))
            if result.failures:
                bar.set_postfix(skipped=len(report.failures))
            if time.monotonic() - last_checkpoint > CHECKPOINT_SECONDS:
                catalog.save()
                last_checkpoint = time.monotonic()
