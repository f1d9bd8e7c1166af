"""The catalog's items in SQLite: items, metadata, settings, keys removed by hand, and a log of
what changed.

Vectors live in the vector file (`vectors.py`); an item's ``label`` is its row there, its HNSW
label too, and is never reused. Each write is one transaction, so a crash (kill -9 included)
leaves the state before or after it, never a mix. The ``changes`` table says which labels each
generation added, removed or re-described, so an open catalog catches up with another process's
writes without rereading every item. The file itself (schema, connections, transactions, what an
SQLite error means) is `database`'s; metadata fields in SQL are `store_fields`'.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import BadArgumentError
from ..json_values import bad_field, dumps_metadata, loads_stored, storable
from .database import CHANGES_SCHEMA as CHANGES_SCHEMA
from .database import CHUNK, Database
from .database import DB_NAME as DB_NAME
from .database import ITEMS_COLUMNS as ITEMS_COLUMNS
from .database import REMOVED_SCHEMA as REMOVED_SCHEMA
from .database import SCHEMA_VERSION as SCHEMA_VERSION
from .database import UPSERT_SETTING as UPSERT_SETTING
from .database import disk_full as disk_full
from .database import is_disk_full as is_disk_full
from .store_fields import VALID_OR_EMPTY, field_sql, field_texts, json_path, stored_fields, unspellable

ADDED, REMOVED, DESCRIBED = 1, 2, 3  # kinds of change


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
    feed: str | None = None  # the feed (its key prefix) that owns the item; None: no feed


@dataclass(frozen=True)
class Delta:
    """Labels that appeared, disappeared or got new metadata between two generations."""

    added: np.ndarray
    removed: np.ndarray
    described: np.ndarray

    @classmethod
    def empty(cls) -> Delta:
        none = np.zeros(0, np.int64)
        return cls(none, none, none)

    def __bool__(self) -> bool:
        return bool(len(self.added) or len(self.removed) or len(self.described))


_ITEM_COLUMNS = "label, key, path, size, mtime_ns, metadata"


def _item(row: Sequence[Any]) -> Item:
    return Item(row[0], row[1], row[2], row[3], row[4], loads_stored(row[5]))


def metadata_text(key: str, metadata: dict[str, Any] | None) -> str:
    """The stored JSON of an item's metadata; `BadArgumentError` naming the item and the field
    for a value SQLite's JSON functions could not read (NaN, Infinity, ...)."""
    bad = bad_field(metadata or {})
    if bad is not None:
        raise BadArgumentError(
            f"item {key!r}: metadata field {bad[0]!r}: {bad[1]}; nothing was written. "
            "Give numbers as finite values (or as text)."
        )
    return dumps_metadata(metadata or {})



class Store(Database):
    """The catalog's reads and writes, on the SQLite file `Database` opens."""

    # -- settings -----------------------------------------------------------------------------

    def get_setting(self, name: str, default: str | None = None) -> str | None:
        rows = self._read("SELECT value FROM settings WHERE name = ?", (name,))
        return rows[0][0] if rows else default

    def settings(self) -> dict[str, str]:
        return dict(self._read("SELECT name, value FROM settings"))

    def set_settings(self, values: dict[str, str], *, bump: bool = False) -> int:
        """``bump`` for settings that other open catalogs must take in (ef, the reduction)."""
        with self.transaction() as db:
            self._put(db, values)
            return self._bump(db) if bump else self._generation(db)

    @staticmethod
    def _put(db: sqlite3.Connection, values: dict[str, str]) -> None:
        db.executemany(
            UPSERT_SETTING,
            list(values.items()),
        )

    @property
    def generation(self) -> int:
        """Bumped by every write; the graph file records the generation it covers."""
        return int(self.get_setting("generation", "0") or 0)

    @staticmethod
    def _generation(db: sqlite3.Connection) -> int:
        return int(db.execute("SELECT value FROM settings WHERE name = 'generation'").fetchone()[0])

    def _bump(self, db: sqlite3.Connection) -> int:
        db.execute("UPDATE settings SET value = CAST(value AS INTEGER) + 1 WHERE name = 'generation'")
        return self._generation(db)

    def state(self) -> tuple[int, int, int]:
        """``(generation, items, rows)`` in one read: rows is the vector file's committed length."""
        values = dict(
            self._read(
                "SELECT name, value FROM settings WHERE name IN ('generation', 'items.count', 'vectors.rows')"
            )
        )
        return (
            int(values.get("generation", 0)),
            int(values.get("items.count", 0)),
            int(values.get("vectors.rows", 0)),
        )

    # -- writing items --------------------------------------------------------------------------

    @contextmanager
    def writing(self) -> Iterator[Writer]:
        """A write transaction with the helpers that keep counts and the change log right."""
        with self.transaction() as db:
            writer = Writer(self, db)
            yield writer
            writer.finish()

    def update_metadata(self, metadata: dict[str, dict[str, Any]]) -> int:
        """Replace metadata of existing keys without touching vectors; returns rows changed."""
        texts = {key: metadata_text(key, values) for key, values in metadata.items()}
        with self.writing() as writer:
            for key, text in texts.items():
                row = writer.db.execute(
                    "UPDATE items SET metadata = ? WHERE key = ? AND metadata != ? RETURNING label",
                    (text, key, text),
                ).fetchone()
                if row:
                    writer.log(row[0], DESCRIBED)
            return writer.changed

    def update_paths(self, paths: dict[str, str]) -> int:
        """Point existing keys at files that moved (same content), keeping their vectors."""
        with self.writing() as writer:
            for key, path in paths.items():
                row = writer.db.execute(
                    "UPDATE items SET path = ? WHERE key = ? RETURNING label", (path, key)
                ).fetchone()
                if row:
                    writer.log(row[0], DESCRIBED)
            return writer.changed

    # -- reading items --------------------------------------------------------------------------

    def count(self) -> int:
        return int(self._read("SELECT COUNT(*) FROM items")[0][0])

    def item_by_key(self, key: str) -> Item | None:
        if not storable(key):  # no stored key holds what UTF-8 cannot: it is simply not there
            return None
        rows = self._read(f"SELECT {_ITEM_COLUMNS} FROM items WHERE key = ?", (key,))
        return _item(rows[0]) if rows else None

    def items_by_key(self, keys: Sequence[str]) -> dict[str, Item]:
        rows = self._read_chunked(f"SELECT {_ITEM_COLUMNS} FROM items WHERE key IN ({{marks}})", keys)
        return {row[1]: _item(row) for row in rows}

    def items_by_label(self, labels: Sequence[int]) -> dict[int, Item]:
        rows = self._read_chunked(f"SELECT {_ITEM_COLUMNS} FROM items WHERE label IN ({{marks}})", labels)
        return {row[0]: _item(row) for row in rows}

    def keys_by_path(self, paths: Sequence[str]) -> dict[str, str]:
        return dict(self._read_chunked("SELECT path, key FROM items WHERE path IN ({marks})", paths))

    def iter_items(self, batch: int = 10_000) -> Iterator[Item]:
        """Every item in label order, read in batches (a million items never sit in memory)."""
        last = -1
        while True:
            rows = self._read(
                f"SELECT {_ITEM_COLUMNS} FROM items WHERE label > ? ORDER BY label LIMIT ?", (last, batch)
            )
            if not rows:
                return
            yield from (_item(row) for row in rows)
            last = rows[-1][0]

    def items_under(self, folder: str) -> list[tuple[str, str]]:
        """``(key, path)`` of items whose path lies below ``folder`` (a prefix range on the index)."""
        prefix = folder.rstrip("/") + "/"
        return self._read(
            "SELECT key, path FROM items WHERE path >= ? AND path < ?", (prefix, prefix[:-1] + "0")
        )

    def items_with_key_prefix(self, prefix: str) -> list[tuple[str, str | None]]:
        """``(key, path)`` of items whose key starts with ``prefix`` (a range on the key index)."""
        end = prefix[:-1] + chr(ord(prefix[-1]) + 1)  # UTF-8 byte order is code point order
        return self._read(
            "SELECT key, path FROM items WHERE key >= ? AND key < ? ORDER BY key", (prefix, end)
        )

    def feed_keys(self, feed: str) -> list[str]:
        """Keys of the items the feed with key prefix ``feed`` added (a range on the key index)."""
        end = feed[:-1] + chr(ord(feed[-1]) + 1)
        rows = self._read(
            "SELECT key FROM items WHERE key >= ? AND key < ? AND feed = ? ORDER BY key", (feed, end, feed)
        )
        return [row[0] for row in rows]

    def feed_owners(self, keys: Sequence[str]) -> dict[str, str | None]:
        """``key -> owning feed (its key prefix), or None`` for the keys held."""
        owners: dict[str, str | None] = {}
        for start in range(0, len(keys), 500):
            chunk = list(keys[start : start + 500])
            marks = ",".join("?" * len(chunk))
            rows = self._read(f"SELECT key, feed FROM items WHERE key IN ({marks})", chunk)
            owners.update((row[0], row[1]) for row in rows)
        return owners

    def claim_for_feed(self, feed: str, keys: Sequence[str]) -> int:
        """Record that the feed owns these existing items (rows it synced that an older version
        added). Not a change searches see: no generation, no change log."""
        claimed = 0
        with self.transaction() as db:
            for start in range(0, len(keys), CHUNK):
                chunk = list(keys[start : start + CHUNK])
                claimed += db.execute(
                    f"UPDATE items SET feed = ? WHERE key IN ({','.join('?' * len(chunk))}) "
                    "AND feed IS NOT ?",
                    [feed, *chunk, feed],
                ).rowcount
        return claimed

    def labels(self) -> np.ndarray:
        """Labels of every item, ascending."""
        rows = self._read("SELECT label FROM items ORDER BY label")
        return np.fromiter((r[0] for r in rows), np.int64, len(rows))

    def field_values(self, field: str) -> list[tuple[int, Any]]:
        """``(label, value)`` of one metadata field, for the items that have it."""
        name = field if unspellable(field) else json_path(field)
        return field_texts(field, self._read(field_sql(field, "1"), [name]))

    def field_values_of(self, field: str, labels: Sequence[int]) -> list[tuple[int, Any]]:
        """The same as `field_values`, for some labels only (catching up after a write)."""
        name = field if unspellable(field) else json_path(field)
        rows: list[tuple[Any, ...]] = []
        for start in range(0, len(labels), CHUNK):
            chunk = [int(label) for label in labels[start : start + CHUNK]]
            marks = ",".join(f"?{n}" for n in range(2, len(chunk) + 2))
            rows += self._read(field_sql(field, f"items.label IN ({marks})"), [name, *chunk])
        return field_texts(field, rows)

    def field_names(self) -> list[str]:
        rows = self._read(f"SELECT DISTINCT j.key FROM items, json_each({VALID_OR_EMPTY}) AS j ORDER BY 1")
        names = {r[0] for r in rows}
        for (text,) in self._read("SELECT metadata FROM items WHERE NOT json_valid(metadata)"):
            names.update(stored_fields(text))
        return sorted(names)

    def unreadable_metadata(self, limit: int = 10) -> tuple[int, list[str]]:
        """How many items hold metadata SQLite's JSON functions refuse (a NaN written before such
        values were refused), and the first keys."""
        rows = self._read("SELECT key FROM items WHERE NOT json_valid(metadata) ORDER BY key")
        return len(rows), [r[0] for r in rows[:limit]]

    # -- keys removed by hand --------------------------------------------------------------------

    def remember_removed(
        self, keys: Sequence[str], metadata: Mapping[str, dict[str, Any]] | None = None
    ) -> None:
        """Record keys as removed by hand (before their items go: a crash in between leaves a key
        both remembered and present, and a present item always counts as present), with the
        items' ``metadata`` to restore when they are indexed back."""
        now = time.time()
        metadata = metadata or {}
        with self.transaction() as db:
            db.executemany(
                "INSERT OR REPLACE INTO removed_keys(key, removed_at, metadata) VALUES (?, ?, ?)",
                [(k, now, dumps_metadata(metadata[k]) if k in metadata else None) for k in keys],
            )

    def removed_metadata(self, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The metadata remembered for those of ``keys`` removed by hand (none for a key removed
        by a version that did not remember it)."""
        if not self._has_removed_table() or not self._removed_metadata_column():
            return {}
        rows = self._read_chunked(
            "SELECT key, metadata FROM removed_keys WHERE metadata IS NOT NULL AND key IN ({marks})", keys
        )
        return {key: stored_fields(text) for key, text in rows}

    def _removed_metadata_column(self) -> bool:
        """False for a removed_keys table written before 0.3 (opened read-only, or not yet altered)."""
        return any(row[1] == "metadata" for row in self._read("PRAGMA table_info(removed_keys)"))

    def removed_among(self, keys: Sequence[str]) -> set[str]:
        """Those of ``keys`` that were removed by hand and not added since."""
        if not self._has_removed_table() or not self._read("SELECT 1 FROM removed_keys LIMIT 1"):
            return set()  # the usual case: a first index of a million files asks nothing more
        rows = self._read_chunked("SELECT key FROM removed_keys WHERE key IN ({marks})", keys)
        return {row[0] for row in rows}

    def removed_keys(self) -> list[str]:
        if not self._has_removed_table():
            return []
        return [row[0] for row in self._read("SELECT key FROM removed_keys ORDER BY key")]

    def _has_removed_table(self) -> bool:
        """False for a schema-2 catalog written before 0.2 and opened read-only."""
        return bool(self._read("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'removed_keys'"))

    # -- the change log -------------------------------------------------------------------------

    def delta_since(self, generation: int) -> Delta | None:
        """What changed after ``generation``; None when the log no longer reaches back that far
        (the caller then rereads everything)."""
        if generation < int(self.get_setting("changes.since", "0") or 0):
            return None
        rows = self._read("SELECT label, kind FROM changes WHERE generation > ?", (generation,))
        by_kind: dict[int, list[int]] = {ADDED: [], REMOVED: [], DESCRIBED: []}
        for label, kind in rows:
            by_kind[kind].append(label)
        removed = set(by_kind[REMOVED])
        added = [label for label in by_kind[ADDED] if label not in removed]
        described = [label for label in by_kind[DESCRIBED] if label not in removed]
        return Delta(*(np.asarray(sorted(set(v)), np.int64) for v in (added, sorted(removed), described)))

    def changes_logged(self) -> int:
        return int(self._read("SELECT COUNT(*) FROM changes")[0][0])

    def prune_changes(self, upto: int) -> None:
        """Forget changes up to ``upto`` (a saved graph covers them); laggards reread everything."""
        with self.transaction() as db:
            db.execute("DELETE FROM changes WHERE generation <= ?", (upto,))
            self._put(db, {"changes.since": str(upto)})

    def integrity_problems(self) -> list[str]:
        """SQLite's own quick check; empty when the file is sound."""
        return [r[0] for r in self._read("PRAGMA quick_check") if r[0] != "ok"]


class Writer:
    """Inside one write transaction: allocates labels, logs changes, keeps the item count."""

    def __init__(self, store: Store, db: sqlite3.Connection) -> None:
        self.store = store
        self.db = db
        self.changed = 0
        self._count_delta = 0
        self._log: list[tuple[int, int]] = []
        values = dict(db.execute("SELECT name, value FROM settings").fetchall())
        self.next_label = int(values.get("vectors.rows", 0))
        self.generation = int(values["generation"]) + 1

    def log(self, label: int, kind: int) -> None:
        self._log.append((label, kind))
        self.changed += 1

    def remove(self, keys: Sequence[str]) -> list[int]:
        """Delete the items of ``keys`` (those present; a key given twice counts once): their labels,
        in label order. A statement per `CHUNK` keys, not per key (a batch of 20,000 new items
        asks for each key's old row)."""
        labels: list[int] = []
        for start in range(0, len(keys), CHUNK):
            chunk = list(keys[start : start + CHUNK])
            labels += (
                row[0]
                for row in self.db.execute(
                    f"DELETE FROM items WHERE key IN ({','.join('?' * len(chunk))}) RETURNING label", chunk
                )
            )
        labels.sort()
        for label in labels:
            self.log(label, REMOVED)
        self._count_delta -= len(labels)
        return labels

    def insert(self, items: Sequence[NewItem], texts: Sequence[str]) -> list[int]:
        """Rows for new items at the next labels (their vectors must already be written there);
        ``texts``: their metadata as `metadata_text` gave it, checked before any byte was written."""
        now = time.time()
        labels = list(range(self.next_label, self.next_label + len(items)))
        self.db.executemany(
            "INSERT INTO items(label, key, path, size, mtime_ns, metadata, added_at, feed) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (label, item.key, item.path, item.size, item.mtime_ns, text, now, item.feed)
                for label, item, text in zip(labels, items, texts, strict=True)
            ],
        )  # fmt: skip
        self.db.executemany("DELETE FROM removed_keys WHERE key = ?", [(item.key,) for item in items])
        for label in labels:
            self.log(label, ADDED)
        self.next_label += len(items)
        self._count_delta += len(items)
        return labels

    def note(self, values: dict[str, str]) -> None:
        """Settings committed in this write's transaction (how far a derived file is good)."""
        Store._put(self.db, values)

    def finish(self) -> None:
        if not self.changed:
            return
        self.db.executemany(
            "INSERT INTO changes(generation, label, kind) VALUES (?, ?, ?)",
            [(self.generation, label, kind) for label, kind in self._log],
        )
        count = (
            int(self.db.execute("SELECT value FROM settings WHERE name = 'items.count'").fetchone()[0])
            + self._count_delta
        )
        Store._put(self.db, {"vectors.rows": str(self.next_label), "items.count": str(count)})
        assert self.store._bump(self.db) == self.generation
