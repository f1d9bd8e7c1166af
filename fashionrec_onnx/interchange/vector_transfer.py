"""Vectors files in and out of a catalog, through the catalog's public API only.

Import streams the files batch by batch (memory holds two batches, not the files: the next is
read and parsed on a thread while the current one is written), refuses vectors of another model,
and commits each batch as one transaction: a run killed at any moment keeps the batches it
committed, and running it again finishes the job (rows already in the catalog with the same
vector, path and metadata are left alone). Export writes the same layout, so export then
import moves a catalog's vectors to another catalog, and other tools read them as they are.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from ..catalog.reports import ExportReport as ExportReport
from ..catalog.reports import ImportReport as ImportReport
from ..errors import RottenVectorError
from .vector_files import (
    ROW_GROUP_ROWS,
    FileInfo,
    VectorBatch,
    VectorFileWriter,
    build_table,
    inspect,
    metadata_text,
    part_name,
    prepare_output,
    read_batches,
)

if TYPE_CHECKING:
    import pyarrow as pa

    from ..catalog import Catalog, Item


log = logging.getLogger(__name__)

ROWS_PER_FILE = 65_536  # 512 MB of 2048-d vectors per exported file
IMPORT_BATCH = 16_384  # rows per import transaction (128 MB of 2048-d vectors): a 4,096-row
# batch paid its two fsyncs, its transaction and its graph call four times as often
SAME_VECTOR_TOLERANCE = {"float32": 1e-6, "float16": 1e-3}
"""Largest difference between a stored and an offered value that still counts as the same vector:
stored vectors are rounded to the catalog's storage type and renormalised, never bit-identical."""


def _tolerance(catalog: Catalog) -> float:
    return SAME_VECTOR_TOLERANCE.get(str(catalog.summary().get("vector_dtype")), 1e-6)


def _latest(batch: VectorBatch) -> list[int]:
    """Row numbers of a batch, keeping only the last row of a key given twice."""
    last = {key: row for row, key in enumerate(batch.keys)}
    return sorted(last.values())


def _compare(
    catalog: Catalog, batch: VectorBatch, rows: list[int], tolerance: float
) -> tuple[set[int], set[int]]:
    """(rows whose key the catalog holds, those of them with the same path, metadata and vector)."""
    items = catalog.get_many(batch.keys[row] for row in rows)
    known = {row for row in rows if batch.keys[row] in items}
    alike = [
        row
        for row in sorted(known)
        if (item := items[batch.keys[row]]).path == batch.paths[row]
        and item.metadata == batch.metadata[row]
        and (item.size, item.mtime_ns) == (batch.sizes[row], batch.mtimes_ns[row])
    ]
    if not alike:
        return known, set()
    try:
        stored = catalog.vectors([batch.keys[row] for row in alike])
    except RottenVectorError as exc:  # a damaged stored vector is replaced by the file's sound one
        rotten = set(exc.keys)
        alike = [row for row in alike if batch.keys[row] not in rotten]
        stored = catalog.vectors([batch.keys[row] for row in alike])
    close = np.max(np.abs(stored - batch.vectors[alike]), axis=1) <= tolerance
    return known, {row for row, equal in zip(alike, close) if equal}


def import_vectors(
    catalog: Catalog,
    path: str | os.PathLike[str],
    *,
    batch_size: int = IMPORT_BATCH,
    progress: bool = False,
) -> ImportReport:
    """Add the vectors of a folder (or file) of vectors files to ``catalog``, incrementally.

    Files of another model or dimension are refused (``ModelMismatchError``) before anything is
    written. New keys are added, keys whose vector, path or metadata changed are replaced, the
    rest are counted as unchanged; rows with an ``error`` or without a usable vector are skipped
    and listed. Each batch is one transaction. Files exported from a catalog with a product field
    name it: a catalog without one takes it (``report.product_field``); one with another keeps its own.
    """
    started = time.perf_counter()
    infos = inspect(path)  # every file checked up front: a mismatch writes nothing
    target = f"catalog {catalog.path}"
    report = ImportReport(files=len(infos))
    tolerance = _tolerance(catalog)
    total = sum(info.rows for info in infos)
    with tqdm(total=total, unit="vec", desc="importing", disable=not progress or not total) as bar:
        batches = read_batches(
            path,
            fingerprint=catalog.info.fingerprint,
            dim=catalog.dim,
            batch_size=batch_size,
            target=target,
            also=catalog.model_fingerprints,
        )
        for batch in read_ahead(batches):
            report.rows += len(batch) + len(batch.errors)
            report.skipped.extend(batch.errors)
            latest = _latest(batch)
            known, unchanged = _compare(catalog, batch, latest, tolerance)
            rows = [row for row in latest if row not in unchanged]
            report.unchanged += len(unchanged)
            report.updated += len(known) - len(unchanged)
            report.added += len(rows) - (len(known) - len(unchanged))
            if rows:
                catalog.add_many(
                    [batch.keys[r] for r in rows],
                    batch.vectors[rows],
                    paths=[batch.paths[r] for r in rows],
                    metadata=[batch.metadata[r] for r in rows],
                    sizes=[batch.sizes[r] for r in rows],
                    mtimes_ns=[batch.mtimes_ns[r] for r in rows],
                )
                log.debug("committed %d rows (%d of %d read)", len(rows), report.rows, total)
            bar.update(len(batch) + len(batch.errors))
    _take_product_field(catalog, infos, report)
    catalog.save()
    report.seconds = time.perf_counter() - started
    log.debug(
        "imported %d rows from %d file(s) in %.1fs: %d added, %d updated, %d unchanged, %d skipped",
        report.rows, report.files, report.seconds, report.added, report.updated, report.unchanged,
        len(report.skipped),
    )  # fmt: skip
    return report


def read_ahead(batches: Generator[VectorBatch, None, None]) -> Iterator[VectorBatch]:
    """``batches``, each next one read on a thread while the caller works on the current one:
    Parquet decoding and metadata parsing use the core the write's fsyncs and single-threaded
    steps leave idle. An error reading a batch is raised where that batch would have come."""
    with ThreadPoolExecutor(1, thread_name_prefix="fashionrec-import-read") as reader:
        pending = reader.submit(next, batches, None)
        try:
            while (batch := pending.result()) is not None:
                pending = reader.submit(next, batches, None)
                yield batch
        finally:
            if not pending.cancel():
                pending.exception()  # wait until the reader is done with the generator
            batches.close()


def _take_product_field(catalog: Catalog, infos: list[FileInfo], report: ImportReport) -> None:
    named = sorted({info.product_field for info in infos if info.product_field})
    if len(named) == 1 and catalog.product_field is None:
        catalog.set_product_field(named[0])
        report.product_field = named[0]
    elif named and catalog.product_field not in named:
        log.warning(
            "the vectors files group photos by %s; %s keeps its product field %r",
            " and ".join(repr(name) for name in named), catalog.path, catalog.product_field,
        )  # fmt: skip


def _chunks(items: Iterator[Item], size: int) -> Iterator[list[Item]]:
    while chunk := list(itertools.islice(items, size)):
        yield chunk


def export_vectors(
    catalog: Catalog,
    path: str | os.PathLike[str],
    *,
    rows_per_file: int = ROWS_PER_FILE,
    batch_size: int = ROW_GROUP_ROWS,
) -> ExportReport:
    """Write every item of ``catalog`` (key, path, change markers, vector, metadata) as vectors
    files into ``path``, a new folder or URI, reading the catalog a batch at a time."""
    started = time.perf_counter()
    fs, root = prepare_output(path)
    report = ExportReport()
    dim, fingerprint, product_field = catalog.dim, catalog.info.fingerprint, catalog.product_field
    writer: VectorFileWriter | None = None
    try:
        for chunk in _chunks(catalog.iter_items(), min(batch_size, rows_per_file)):
            if writer is None or writer.rows + len(chunk) > rows_per_file:
                if writer is not None:
                    writer.close()
                writer = VectorFileWriter(
                    fs, f"{root}/{part_name(len(report.files))}", dim, fingerprint, product_field
                )
                report.files.append(writer.path)
            table = _table(catalog, chunk, report.damaged)
            writer.write(table)
            report.rows += table.num_rows
        if writer is None:  # an empty catalog still gives one file, with the model in it
            writer = VectorFileWriter(fs, f"{root}/{part_name(0)}", dim, fingerprint, product_field)
            report.files.append(writer.path)
        writer.close()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    report.seconds = time.perf_counter() - started
    log.debug("exported %d vectors of %s to %d file(s)", report.rows, catalog.path, len(report.files))
    if report.damaged:
        log.warning(
            "%s: left %d item(s) out of the export whose stored vector is damaged (first: %r); "
            "`fashionrec verify --catalog %s` counts them: remove them and index their images again",
            catalog.path, len(report.damaged), report.damaged[0], catalog.path,
        )  # fmt: skip
    return report


def _table(catalog: Catalog, items: list[Item], damaged: list[str]) -> pa.Table:
    """The rows of ``items``; those whose stored vector is damaged are left out (into ``damaged``):
    an export never writes NaN or zeros as a vector."""
    try:
        vectors = catalog.vectors([item.key for item in items])
    except RottenVectorError as exc:
        rotten = set(exc.keys)
        damaged.extend(item.key for item in items if item.key in rotten)
        items = [item for item in items if item.key not in rotten]
        vectors = catalog.vectors([item.key for item in items])
    return build_table(
        catalog.dim,
        catalog.info.fingerprint,
        keys=[item.key for item in items],
        vectors=vectors,
        paths=[item.path for item in items],
        sizes=[item.size for item in items],
        mtimes_ns=[item.mtime_ns for item in items],
        metadata=[metadata_text(item.metadata) for item in items],
    )
