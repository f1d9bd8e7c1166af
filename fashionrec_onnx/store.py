"""The catalog's storage: one SQLite file holds items, their vectors and the catalog's settings.

Every SQL statement of the project lives here. Vectors are the truth (exact search and a graph
rebuild never re-embed); the HNSW graph file is a cache that the store records by name, size,
checksum and the generation it covers. Each batch is one transaction, so a crash (kill -9
included) leaves the state before or after it, never a mix.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CatalogCorruptError, CatalogError

SCHEMA_VERSION = 1
DB_NAME = "catalog.sqlite"
VECTOR_DTYPES = ("float32", "float16")  # float16 halves storage; vectors are unit length

_SCHEMA = """
CREATE TABLE IF NOT EXISTS settings (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS items (
    label    INTEGER PRIMARY KEY AUTOINCREMENT,  -- the HNSW label; never reused
    key      TEXT NOT NULL UNIQUE,
    path     TEXT,
    size     INTEGER,
    mtime_ns INTEGER,
    metadata TEXT NOT NULL DEFAULT '{}',
    vector   BLOB NOT NULL,
    added_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS items_path ON items(path);
"""


@dataclass(frozen=True)
class Item:
    """One catalog entry as callers see it (the vector is fetched separately)."""

    label: int
    key: str
    path: str | None
    size: int | None
    mtime_ns: int | None
    metadata: dict[str, Any]


@dataclass(frozen=True)
class NewItem:
    """What a write needs: the vector is unit length, float32, of the catalog's dimension."""

    key: str
    vector: np.ndarray
    path: str | None = None
    size: int | None = None
    mtime_ns: int | None = None
    metadata: dict[str, Any] | None = None


@dataclass(frozen=True)
class WriteResult:
    added: list[int]  # labels of new rows
    removed: list[int]  # labels whose rows were replaced or deleted
    generation: int


def _corrupt(path: Path, exc: Exception) -> CatalogCorruptError:
    return CatalogCorruptError(
        f"{path} is corrupt or not a catalog database ({exc}). The stored items and vectors in it "
        "cannot be read: restore the file from a backup, or delete the catalog directory and "
        "index the images again with `fashionrec index`."
    )


class Store:
    """One SQLite connection, shared by threads under a lock; WAL so readers never block."""

    def __init__(self, path: Path, *, create: bool, readonly: bool = False) -> None:
        self.path = path
        self._lock = threading.RLock()
        if not create and not path.exists():
            raise CatalogError(f"no catalog database at {path}; create one with `fashionrec index`.")
        if readonly:
            uri = f"file:{path}?mode=ro"
            self._db = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None)
        else:
            self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        try:
            if not readonly:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA busy_timeout=30000")
            if create:
                self._db.executescript(_SCHEMA)
                self._init_version()
            self._check_version()
            self.vector_dtype = self._dtype(self.get_setting("vector_dtype", "float32"))
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise _corrupt(path, exc) from exc

    # -- schema ---------------------------------------------------------------------------

    @staticmethod
    def _dtype(name: str | None) -> np.dtype:
        if name not in VECTOR_DTYPES:
            raise CatalogError(f"vector storage must be one of {', '.join(VECTOR_DTYPES)}, not {name!r}")
        return np.dtype(name)

    def _init_version(self) -> None:
        with self.transaction():
            self._db.execute(
                "INSERT OR IGNORE INTO settings(name, value) VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )
            self._db.execute("INSERT OR IGNORE INTO settings(name, value) VALUES ('generation', '0')")

    def _check_version(self) -> None:
        row = self._db.execute("SELECT value FROM settings WHERE name = 'schema_version'").fetchone()
        if row is None:
            raise CatalogCorruptError(f"{self.path} has no schema version: it is not a fashionrec catalog.")
        version = int(row[0])
        if version > SCHEMA_VERSION:
            raise CatalogError(
                f"{self.path} was written by a newer fashionrec-onnx (schema {version}, this one "
                f"reads {SCHEMA_VERSION}); upgrade with `pip install -U fashionrec-onnx`."
            )
        # Older schemas would be migrated here, one step at a time; version 1 is the first.

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic unit: everything inside commits together or not at all."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _read(self, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self._db.execute(sql, tuple(params)).fetchall()
            except sqlite3.ProgrammingError as exc:
                raise CatalogError(f"{self.path} is closed ({exc}); open the catalog again.") from exc
            except sqlite3.DatabaseError as exc:
                raise _corrupt(self.path, exc) from exc

    # -- settings -------------------------------------------------------------------------

    def get_setting(self, name: str, default: str | None = None) -> str | None:
        rows = self._read("SELECT value FROM settings WHERE name = ?", (name,))
        return rows[0][0] if rows else default

    def settings(self) -> dict[str, str]:
        return dict(self._read("SELECT name, value FROM settings"))  # type: ignore[arg-type]

    def set_settings(self, values: dict[str, str], *, bump: bool = False) -> None:
        """``bump`` for settings that other open catalogs must take in (ef, the reduction)."""
        with self.transaction() as db:
            db.executemany(
                "INSERT INTO settings(name, value) VALUES (?, ?) "
                "ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                list(values.items()),
            )
            if bump:
                self._bump(db)
        if "vector_dtype" in values:
            self.vector_dtype = self._dtype(values["vector_dtype"])

    @property
    def generation(self) -> int:
        """Bumped by every write; the graph file records the generation it covers."""
        return int(self.get_setting("generation", "0") or 0)

    # -- items ----------------------------------------------------------------------------

    def write(self, items: Iterable[NewItem], remove_keys: Iterable[str] = ()) -> WriteResult:
        """Upsert and delete in one transaction; a re-added key gets a new label."""
        added: list[int] = []
        removed: list[int] = []
        now = time.time()
        with self.transaction() as db:
            for key in remove_keys:
                row = db.execute("DELETE FROM items WHERE key = ? RETURNING label", (key,)).fetchone()
                if row:
                    removed.append(row[0])
            for item in items:
                row = db.execute("DELETE FROM items WHERE key = ? RETURNING label", (item.key,)).fetchone()
                if row:
                    removed.append(row[0])
                vector = np.ascontiguousarray(item.vector, dtype=self.vector_dtype)
                cursor = db.execute(
                    "INSERT INTO items(key, path, size, mtime_ns, metadata, vector, added_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        item.key,
                        item.path,
                        item.size,
                        item.mtime_ns,
                        json.dumps(item.metadata or {}, sort_keys=True, ensure_ascii=False),
                        vector.tobytes(),
                        now,
                    ),
                )
                added.append(int(cursor.lastrowid))  # type: ignore[arg-type]
            generation = self._bump(db) if (added or removed) else self.generation
        return WriteResult(added, removed, generation)

    def update_metadata(self, metadata: dict[str, dict[str, Any]]) -> int:
        """Replace metadata of existing keys without touching vectors; returns rows changed."""
        changed = 0
        with self.transaction() as db:
            for key, values in metadata.items():
                text = json.dumps(values, sort_keys=True, ensure_ascii=False)
                cursor = db.execute(
                    "UPDATE items SET metadata = ? WHERE key = ? AND metadata != ?", (text, key, text)
                )
                changed += cursor.rowcount
            if changed:
                self._bump(db)
        return changed

    def update_paths(self, paths: dict[str, str]) -> int:
        """Point existing keys at files that moved (same content), keeping their vectors."""
        with self.transaction() as db:
            changed = sum(
                db.execute("UPDATE items SET path = ? WHERE key = ?", (path, key)).rowcount
                for key, path in paths.items()
            )
            if changed:
                self._bump(db)
        return changed

    @staticmethod
    def _bump(db: sqlite3.Connection) -> int:
        db.execute("UPDATE settings SET value = CAST(value AS INTEGER) + 1 WHERE name = 'generation'")
        return int(db.execute("SELECT value FROM settings WHERE name = 'generation'").fetchone()[0])

    def items(self) -> list[Item]:
        rows = self._read("SELECT label, key, path, size, mtime_ns, metadata FROM items ORDER BY label")
        return [Item(r[0], r[1], r[2], r[3], r[4], json.loads(r[5])) for r in rows]

    def count(self) -> int:
        return int(self._read("SELECT COUNT(*) FROM items")[0][0])

    def vectors(self, dim: int, labels: Iterable[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(labels, vectors)`` in label order: all items, or the given labels."""
        if labels is None:
            rows = self._read("SELECT label, vector FROM items ORDER BY label")
        else:
            wanted = list(labels)
            rows = []
            for start in range(0, len(wanted), 500):
                chunk = wanted[start : start + 500]
                marks = ",".join("?" * len(chunk))
                rows += self._read(f"SELECT label, vector FROM items WHERE label IN ({marks})", chunk)
        out = np.empty((len(rows), dim), np.float32)
        found = np.empty(len(rows), np.int64)
        width = dim * self.vector_dtype.itemsize
        for i, (label, blob) in enumerate(rows):
            if len(blob) != width:
                raise CatalogCorruptError(
                    f"{self.path}: the vector of item {label} has {len(blob)} bytes, expected "
                    f"{width}; delete the catalog and index again."
                )
            found[i] = label
            out[i] = np.frombuffer(blob, self.vector_dtype)
        return found, out

    def integrity_problems(self) -> list[str]:
        """SQLite's own quick check; empty when the file is sound."""
        rows = self._read("PRAGMA quick_check")
        return [r[0] for r in rows if r[0] != "ok"]
