"""Indexing a folder into a remote (Milvus) catalog: the rules of `folders` over its backend.

The same decisions as a local catalog (see `folders.index_folder`): only new or changed files
go through the model, moved files get their new path without re-embedding, keys removed by hand
stay out unless ``readd_removed``, new metadata of unchanged files is rewritten, ``prune``
removes the items of files gone from the folder. Each batch is upserted on its own, so a run cut
short (an outage, kill -9) resumes on re-run: what was written is unchanged and skipped, what was
not is embedded, and an upsert by key never duplicates.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from ..catalog.store import NewItem
from ..embedder import Failure
from ..errors import CatalogError
from .folders import IndexReport, _changed_metadata, _moved, _unchanged, _warn_metadata
from .metadata_match import match_metadata
from .scan import ImageFile, Skipped, read_metadata, scan_folder

if TYPE_CHECKING:
    from ..catalog.remote import RemoteCatalog


def index_folder(
    catalog: RemoteCatalog,
    folder: str | os.PathLike[str],
    *,
    metadata: str | os.PathLike[str] | Mapping[str, Mapping[str, Any]] | None = None,
    prune: bool = False,
    progress: bool = True,
    batch_size: int = 32,
    key_prefix: str = "",
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
    known = catalog.get_many([f.key for f in files])
    if not readd_removed:
        removed = set(catalog.backend.removed_keys([f.key for f in files if f.key not in known]))
        files = [f for f in files if f.key not in removed]
        report.skipped_removed = len(removed)
    clashes = [
        f"{f.key!r} is {known[f.key].path or 'an item added without a file'}"
        for f in files
        if f.key in known
        and known[f.key].path != str(f.path)
        and (known[f.key].path is None or Path(str(known[f.key].path)).exists())
    ]
    if clashes:
        raise CatalogError(
            f"{len(clashes)} image(s) of {root} clash with what {catalog.path} holds "
            f"({'; '.join(clashes[:3])}). Nothing was written. Index each folder once, under "
            "its own key prefix (key_prefix=, --key-prefix NAME/), or remove the old items."
        )
    todo = [file for file in files if not _unchanged(known.get(file.key), file)]
    report.unchanged = len(files) - len(todo)
    moved = [file for file in todo if _moved(known.get(file.key), file)]
    if moved:
        vectors = catalog.vectors([f.key for f in moved])
        catalog.backend.write(
            [
                NewItem(f.key, vector, str(f.path), f.size, f.mtime_ns, dict(known[f.key].metadata))
                for f, vector in zip(moved, vectors)
            ]
        )
        report.moved = len(moved)
        todo = [file for file in todo if file not in moved]
    if table:
        changed = _changed_metadata(files, {f.key for f in todo}, known, table)
        if changed:
            report.metadata_updated = catalog.update_metadata(changed)
    _embed_and_write(catalog, todo, known, table, report, progress, batch_size)
    if prune:
        hidden = [str(root / s.relative) + "/" for s in skipped if s.folder]
        gone = [
            item.key
            for item in catalog.iter_items()
            if item.path
            and item.path.startswith(str(root) + "/")
            and item.key not in present
            and not any(item.path.startswith(h) for h in hidden)
        ]
        if gone:
            report.removed = catalog.remove(*gone, remember=False)
    if todo or moved or report.removed:
        catalog.save()  # sealed: the engine indexes the new items now
    report.seconds = time.perf_counter() - started
    return report


def _embed_and_write(
    catalog: RemoteCatalog,
    todo: list[ImageFile],
    known: Mapping[str, Any],
    table: Mapping[str, dict[str, Any]],
    report: IndexReport,
    progress: bool,
    batch_size: int,
) -> None:
    with tqdm(total=len(todo), unit="img", desc="indexing", disable=not progress or not todo) as bar:
        for result in catalog.embedder.iter_batches([f.path for f in todo], batch_size=batch_size):
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
                catalog._write(new)
            report.failures.extend(Failure(f.index, todo[f.index].key, f.reason) for f in result.failures)
            bar.update(len(result.indices) + len(result.failures))
