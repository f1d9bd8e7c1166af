"""Opening a catalog written by an older version brings it to the current schema, once.

Schema 2 -> 3 (items record the feed that owns them): one transaction adds the ``feed`` column
(empty: no item is known to belong to a feed yet, so no sync removes any of them until the feed
that lists them has synced once) and records schema 3. Opened read-only, a schema-2 catalog is
read as it is.

Schema 1 (0.1.0: vectors as BLOBs in SQLite) -> current, in the steps below.

Crash-safe in two steps: the vectors are copied into a new vector file (written under a temporary
name and renamed), then one transaction rebuilds the items table without the BLOBs, creates the
change log and records the vector file and the new schema version. A crash before that commit
leaves schema 1 intact (the next open starts over); after it, the catalog is schema 2. The graph
file stays valid: labels do not change. VACUUM then returns the BLOBs' space to the disk.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import numpy as np

from ..errors import CatalogCorruptError, CatalogError
from .store import CHANGES_SCHEMA, ITEMS_COLUMNS, SCHEMA_VERSION, UPSERT_SETTING, disk_full, is_disk_full
from .vectors import VectorFile, file_name

log = logging.getLogger(__name__)

_BATCH = 20_000


def needs_migration(database: Path) -> bool:
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        try:
            row = db.execute("SELECT value FROM settings WHERE name = 'schema_version'").fetchone()
        except sqlite3.DatabaseError:
            return False  # not a catalog: the normal open reports it
    return row is not None and int(row[0]) < SCHEMA_VERSION


def migrate(root: Path, database: Path) -> None:
    """Every step from the catalog's schema to the current one; the caller holds the write lock."""
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        version = int(db.execute("SELECT value FROM settings WHERE name = 'schema_version'").fetchone()[0])
    if version == 1:
        migrate_v1(root, database)  # straight to the current schema
    elif version == 2:
        migrate_v2(database)


def migrate_v2(database: Path) -> None:
    """Schema 2 -> 3: the ``feed`` column, in one transaction (a crash leaves schema 2)."""
    log.info("upgrading %s to schema %d (items record the feed that owns them)", database, SCHEMA_VERSION)
    db = sqlite3.connect(str(database), isolation_level=None)
    try:
        db.execute("BEGIN IMMEDIATE")
        try:
            version = db.execute("SELECT value FROM settings WHERE name = 'schema_version'").fetchone()[0]
            if version == "2":  # else another process upgraded it meanwhile
                db.execute("ALTER TABLE items ADD COLUMN feed TEXT")
                db.execute(UPSERT_SETTING, ("schema_version", str(SCHEMA_VERSION)))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
    except sqlite3.DatabaseError as exc:
        if is_disk_full(exc):
            raise disk_full(database, exc) from exc
        raise CatalogError(
            f"upgrading {database} failed ({exc}); the catalog is unchanged, try again."
        ) from exc
    finally:
        db.close()


def migrate_v1(root: Path, database: Path) -> None:
    """Schema 1 -> 2; the caller holds the catalog's write lock."""
    log.info("upgrading %s from the 0.1.0 format (vectors move out of SQLite); this runs once", root)
    db = sqlite3.connect(str(database), isolation_level=None)
    try:
        settings = dict(db.execute("SELECT name, value FROM settings").fetchall())
        if settings.get("schema_version") != "1":
            return  # another process upgraded it meanwhile
        dim = int(settings["model.fashionrec.dim"])
        dtype = np.dtype(settings.get("vector_dtype", "float32"))
        top = db.execute("SELECT COALESCE(MAX(label), 0) FROM items").fetchone()[0]
        rows = int(top) + 1
        name = file_name(dtype)
        vectors = VectorFile.create(root / (name + ".migrating"), dim, dtype)
        last = -1
        while True:
            batch = db.execute(
                "SELECT label, vector FROM items WHERE label > ? ORDER BY label LIMIT ?", (last, _BATCH)
            ).fetchall()
            if not batch:
                break
            labels = np.fromiter((r[0] for r in batch), np.int64, len(batch))
            block = np.zeros((int(labels[-1] - labels[0]) + 1, dim), dtype)
            for label, blob in batch:
                if len(blob) != dim * dtype.itemsize:
                    raise CatalogCorruptError(
                        f"{database}: the vector of item {label} has {len(blob)} bytes, expected "
                        f"{dim * dtype.itemsize}; delete the catalog and index again."
                    )
                block[label - labels[0]] = np.frombuffer(blob, dtype)
            vectors.write_rows(int(labels[0]), block)
            last = int(labels[-1])
        vectors.close()
        (root / (name + ".migrating")).replace(root / name)
        count = db.execute("SELECT COUNT(*) FROM items").fetchone()[0]
        db.execute("BEGIN IMMEDIATE")
        try:
            for statement in _STEPS:
                db.execute(statement)
            db.executemany(
                UPSERT_SETTING,
                [
                    ("schema_version", str(SCHEMA_VERSION)),
                    ("vectors.file", name),
                    ("vectors.rows", str(rows)),
                    ("items.count", str(count)),
                    ("changes.since", settings.get("generation", "0")),
                ],
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        try:
            db.execute("VACUUM")
        except sqlite3.OperationalError as exc:  # the upgrade stands; only the space is not returned
            log.warning("could not VACUUM %s after the upgrade (%s); it keeps its old size", database, exc)
    except sqlite3.DatabaseError as exc:
        if is_disk_full(exc):
            raise disk_full(database, exc) from exc
        raise CatalogError(
            f"upgrading {database} failed ({exc}); the catalog is unchanged, try again."
        ) from exc
    finally:
        db.close()


_STEPS = [
    f"CREATE TABLE items_v2 {ITEMS_COLUMNS}",
    "INSERT INTO items_v2(label, key, path, size, mtime_ns, metadata, added_at) "
    "SELECT label, key, path, size, mtime_ns, metadata, added_at FROM items",
    "DROP TABLE items",
    "ALTER TABLE items_v2 RENAME TO items",
    "CREATE INDEX items_path ON items(path)",
    *(statement for statement in CHANGES_SCHEMA.split(";") if statement.strip()),
]
