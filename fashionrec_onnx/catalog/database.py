"""The catalog's SQLite file: its schema (created, and brought up to date in place on a writable
open), the connections (WAL, one writer, one reader a thread), transactions, snapshots, and what
each SQLite error means (a full disk, a damaged file, a busy one).

`store.Store` builds the catalog's reads and writes on `Database`; every SQL statement of the
project lives in the two modules (and `store_fields`).
"""

from __future__ import annotations

import errno
import shutil
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import CatalogCorruptError, CatalogError, DiskFullError, StorageUnavailableError
from ..json_values import storable

SCHEMA_VERSION = 3  # 3: items record the feed that owns them (see `migrate`)
DB_NAME = "catalog.sqlite"
CHUNK = 500  # host parameters per IN (...) list
LOW_SPACE = 1 << 20  # bytes free below which an I/O error is taken for a full disk

ITEMS_COLUMNS = """(
    label    INTEGER PRIMARY KEY,  -- row in the vector file and HNSW label; never reused
    key      TEXT NOT NULL UNIQUE,
    path     TEXT,
    size     INTEGER,
    mtime_ns INTEGER,
    metadata TEXT NOT NULL DEFAULT '{}',
    added_at REAL NOT NULL,
    feed     TEXT  -- the key prefix of the feed that added it (only that feed's sync removes it)
)"""
CHANGES_SCHEMA = """
CREATE TABLE IF NOT EXISTS changes (
    generation INTEGER NOT NULL,
    label      INTEGER NOT NULL,
    kind       INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS changes_generation ON changes(generation);
"""
# Keys removed by hand, so that indexing a folder does not bring them back; an insert of the key
# forgets it. Added in 0.2 without a schema bump: it is created on the first writable open of an
# older schema-2 catalog, and code that does not know it ignores it (removals then do not stick).
# ``metadata`` (0.3, a nullable column added the same way) keeps the item's metadata, so that
# `index --include-removed` brings the item back as it was; older code writes NULL there.
REMOVED_SCHEMA = """
CREATE TABLE IF NOT EXISTS removed_keys (
    key        TEXT PRIMARY KEY,
    removed_at REAL NOT NULL,
    metadata   TEXT
) WITHOUT ROWID;
"""
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS settings (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS items {ITEMS_COLUMNS};
CREATE INDEX IF NOT EXISTS items_path ON items(path);
{CHANGES_SCHEMA}{REMOVED_SCHEMA}"""



UPSERT_SETTING = (
    "INSERT INTO settings(name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = excluded.value"
)


def is_disk_full(exc: BaseException, path: Path | None = None) -> bool:
    """ENOSPC and friends, SQLite's "database or disk is full", and, for ``path`` on a file
    system with (almost) no space left, the generic I/O error SQLite gives when it cannot grow
    its WAL index."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if isinstance(exc, sqlite3.OperationalError) and "full" in str(exc).lower():
        return True
    if path is not None and isinstance(exc, (OSError, sqlite3.OperationalError)):
        try:
            return shutil.disk_usage(path.parent).free < LOW_SPACE
        except OSError:
            return False
    return False


def disk_full(path: Path, exc: BaseException) -> DiskFullError:
    return DiskFullError(
        f"the disk holding {path} is full ({exc}); nothing of this operation was kept and the "
        "catalog is as it was before. Free some space and run the same command again."
    )


def _corrupt(path: Path, exc: Exception) -> CatalogCorruptError:
    return CatalogCorruptError(
        f"{path} is corrupt or not a catalog database ({exc}). The stored items in it cannot be "
        "read: restore the file from a backup, or delete the catalog directory and index the "
        "images again with `fashionrec index`."
    )


# SQLite's primary result codes that mean the file itself is damaged or not a database.
_DAMAGED = {11, 26, 24, 10}  # SQLITE_CORRUPT, SQLITE_NOTADB, SQLITE_FORMAT, SQLITE_IOERR
_TRANSIENT = {5, 6, 7, 14, 15}  # SQLITE_BUSY, SQLITE_LOCKED, SQLITE_NOMEM, SQLITE_CANTOPEN, SQLITE_PROTOCOL


def _damaged(exc: sqlite3.DatabaseError) -> bool:
    """Whether an error of a query means a damaged file, rather than a query SQLite refused
    (a JSON path, a malformed JSON value): only then is the corruption message right."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:
        return type(exc) is sqlite3.DatabaseError
    return code & 0xFF in _DAMAGED



class Database:
    """SQLite in WAL mode: one connection for writes (under a lock) and one per reading thread,
    so a search reads one consistent snapshot while other threads and processes write."""

    def __init__(self, path: Path, *, create: bool = False, readonly: bool = False) -> None:
        self.path = path
        self.readonly = readonly
        self._lock = threading.RLock()
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._closed = False
        if not create and not path.exists():
            raise CatalogError(f"no catalog database at {path}; create one with `fashionrec index`.")
        self._uri = self._uri_for(path, readonly)
        try:
            self._db = self._connect()
            if not readonly:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=FULL")
            if create:
                self._db.executescript(_SCHEMA)
                with self.transaction() as db:
                    db.execute(
                        "INSERT OR IGNORE INTO settings VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
                    )
                    db.execute("INSERT OR IGNORE INTO settings VALUES ('generation', '0')")
            elif not readonly:
                self._db.executescript(REMOVED_SCHEMA)
                columns = self._db.execute("PRAGMA table_info(removed_keys)").fetchall()
                if not any(row[1] == "metadata" for row in columns):
                    self._db.execute("ALTER TABLE removed_keys ADD COLUMN metadata TEXT")
            self.schema_version = self._schema_version()
        except sqlite3.DatabaseError as exc:
            if hasattr(self, "_db"):
                self._db.close()
            if is_disk_full(exc, path):
                raise disk_full(path, exc) from exc
            raise _corrupt(path, exc) from exc

    @staticmethod
    def _uri_for(path: Path, readonly: bool) -> str:
        if not readonly:
            return f"file:{path}"
        # A catalog on a read-only medium: SQLite cannot create its lock files there, so it is
        # opened as immutable (it cannot change while we read it anyway).
        writable = path.parent.exists() and _can_write(path.parent)
        return f"file:{path}?mode=ro" + ("" if writable else "&immutable=1")

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self._uri, uri=True, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA busy_timeout=30000")
        return db

    def _schema_version(self) -> int:
        row = self._db.execute("SELECT value FROM settings WHERE name = 'schema_version'").fetchone()
        if row is None:
            raise CatalogCorruptError(f"{self.path} has no schema version: it is not a fashionrec catalog.")
        version = int(row[0])
        if version > SCHEMA_VERSION:
            raise CatalogError(
                f"{self.path} was written by a newer fashionrec-onnx (schema {version}, this one "
                f"reads {SCHEMA_VERSION}); upgrade with `pip install -U fashionrec-onnx`."
            )
        return version

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for reader in self._readers:
                reader.close()
            self._db.close()

    # -- transactions and snapshots -----------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic unit: everything inside commits together or not at all. A full disk is a
        `DiskFullError`; the transaction is rolled back and the database stays as it was."""
        with self._lock:
            self._check_open()
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise self._failure(exc) from exc
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException as exc:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                if isinstance(exc, sqlite3.DatabaseError):
                    raise self._failure(exc) from exc
                raise

    def _failure(self, exc: sqlite3.DatabaseError) -> CatalogError:
        if is_disk_full(exc, self.path):
            return disk_full(self.path, exc)
        if isinstance(exc, sqlite3.OperationalError) and "readonly" in str(exc).replace("-", "").lower():
            return CatalogError(
                f"{self.path} cannot be written ({exc}); open the catalog read-only to search it."
            )
        if _damaged(exc):
            return _corrupt(self.path, exc)
        code = (getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF
        if code in _TRANSIENT:
            return StorageUnavailableError(
                f"{self.path} cannot answer now ({exc}); nothing was changed, try again."
            )
        return CatalogError(f"{self.path}: SQLite could not run the query ({exc}); the catalog is unchanged.")

    def _check_open(self) -> None:
        if self._closed:
            raise CatalogError(f"{self.path} is closed; open the catalog again.")

    def _reader(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            with self._lock:
                self._check_open()
                db = self._connect()
                self._readers.append(db)
            self._local.db = db
        return db

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Reads on this thread inside the block see one committed state of the database."""
        db = self._reader()
        if db.in_transaction:  # nested: the outer snapshot holds
            yield
            return
        self._run(db, "BEGIN")
        try:
            yield
        finally:
            if db.in_transaction:
                db.execute("COMMIT")

    def _run(self, db: sqlite3.Connection, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        self._check_open()
        try:
            return db.execute(sql, tuple(params)).fetchall()
        except sqlite3.ProgrammingError as exc:
            raise CatalogError(f"{self.path} is closed ({exc}); open the catalog again.") from exc
        except sqlite3.DatabaseError as exc:
            raise self._failure(exc) from exc

    def _read(self, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        return self._run(self._reader(), sql, params)

    def _read_chunked(self, sql: str, values: Sequence[Any]) -> list[tuple[Any, ...]]:
        """``sql`` with one ``{marks}`` placeholder run for ``values`` in chunks."""
        rows: list[tuple[Any, ...]] = []
        values = [v for v in values if not isinstance(v, str) or storable(v)]  # others match nothing
        for start in range(0, len(values), CHUNK):
            chunk = list(values[start : start + CHUNK])
            rows += self._read(sql.format(marks=",".join("?" * len(chunk))), chunk)
        return rows


def _can_write(folder: Path) -> bool:
    import os

    return os.access(folder, os.W_OK)
