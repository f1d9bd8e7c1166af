"""A catalog on a Milvus collection (`backend.Backend` over `pymilvus`).

The collection: ``key`` (VARCHAR primary key), ``vector`` (FLOAT_VECTOR, HNSW index, L2, so
distances are squared L2 as on a local catalog), ``path`` (VARCHAR, '' for none), ``size`` and
``mtime_ns`` (INT64, -1 for none) and ``metadata`` (JSON). Settings live in the collection's
properties (``fashionrec.*``), so any machine that opens the URI gets the same catalog. Keys
removed by hand live in a small second collection, ``<collection>__removed``, and the feed that
owns an item (its key prefix) in a third, ``<collection>__feeds``; both are made on first need.

Consistency, chosen per call: reads within `STRONG_AFTER_WRITE` seconds of this process's own
last write are "Strong" (the Milvus 2.3 server does not always show a client its own deletes at
"Session" level: a removed item came back in the very next search), every other read is
"Session", which is "eventually" for what other processes wrote: their writes show as soon as
the server has applied them (well under a second on a healthy server). That is what service
replicas need: read-your-writes for the process that changes the catalog, and no "Strong" wait
on every search of the processes that only serve.

Keys reach the server only inside our own escaped expressions (``key in [...]``): pymilvus'
``get(ids=...)`` and ``delete(ids=...)`` build theirs without escaping, so a key holding a quote
or a backslash broke them.

Every pymilvus error becomes a one-line `CatalogError` naming the URI (never the password);
a server that cannot be reached is a `StorageUnavailableError`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar
from uuid import uuid4

import numpy as np

from ..errors import CatalogError, StorageUnavailableError
from . import expressions as expr
from .backend import Neighbour
from .location import MilvusLocation
from .milvus_rows import FIELDS, TEXT_MAX, described, row_of, vector_of
from .store import NewItem

log = logging.getLogger(__name__)

PREFIX = "fashionrec."
REMOVED_SUFFIX = "__removed"
FEEDS_SUFFIX = "__feeds"
BRUTE_SHARE = 0.05  # filters passing at most this share of items go to the engine (it scans them)
OVERFETCH = 3  # broader filters: fetch this many times the items expected to pass, unfiltered
SHARE_SECONDS = 30.0  # how long a filter's count is trusted for planning
SHARES_KEPT = 1_024
SEARCH_BATCH = 256  # query vectors per search call (2048-d: 2 MB on the wire)
CONSISTENCY = "Session"
STRONG_AFTER_WRITE = 10.0
CONNECT_SECONDS = 5.0  # connecting; each call then has READ_SECONDS or CALL_SECONDS
# Whole seconds: pymilvus bounds its retries of an unreachable server by a call's timeout only
# when that is an int (a float is ignored, and it retries 75 times, three and a half minutes).
CALL_SECONDS = 30  # a write or a schema change
READ_SECONDS = 10  # a read: a replica must tell its load balancer it is unwell within seconds
WRITE_BATCH = 256  # rows per upsert: 2048-d rows are ~20 kB each on the wire
GET_BATCH = 1_000
TOP_K_MAX = 16_384  # Milvus' limit on limit

T = TypeVar("T")
_READS = frozenset({"get", "count", "query", "search"})
_WRITES = frozenset({"upsert", "delete"})
_QUICK = _READS | {"describe_collection", "describe_index", "has_collection", "get_load_state"}


def _quiet_pymilvus() -> None:
    """pymilvus logs every failed call at ERROR on its own handler; our errors carry the cause,
    and the CLI promises one line, so its logger only speaks for what would crash."""
    for name in ("pymilvus", "pymilvus.milvus_client", "pymilvus.bulk_writer"):  # its own levels
        logging.getLogger(name).setLevel(logging.CRITICAL)


class MilvusBackend:
    """One catalog collection on a Milvus server."""

    def __init__(self, location: MilvusLocation, client: Any) -> None:
        self.location = location
        self.collection = location.collection
        self.removed_collection = location.collection + REMOVED_SUFFIX
        self.feeds_collection = location.collection + FEEDS_SUFFIX
        self._client = client
        self._last_write = -float("inf")
        self._sides: set[str] = set()  # side collections known to exist
        self._shares: dict[str, tuple[float, int, int]] = {}  # filter -> (when, matching, total)

    # -- connecting, creating ------------------------------------------------------------------

    @classmethod
    def connect(cls, location: MilvusLocation) -> MilvusBackend:
        try:
            from pymilvus import MilvusClient
        except ImportError as exc:
            raise CatalogError(
                f"{location} is a Milvus catalog: install pymilvus (pip install 'fashionrec-onnx[milvus]')"
            ) from exc
        _quiet_pymilvus()
        try:
            client = MilvusClient(  # an alias of its own: closing one catalog closes no other
                uri=location.address,
                token=location.token,
                timeout=CONNECT_SECONDS,
                alias=f"fashionrec-{uuid4().hex}",
            )
        except Exception as exc:  # pymilvus raises MilvusException, grpc errors or ValueError
            raise StorageUnavailableError(f"cannot reach Milvus at {location}: {_cause(exc)}") from exc
        return cls(location, client)

    def describe(self) -> str:
        return str(self.location)

    def _wrote(self) -> None:
        self._last_write = time.monotonic()
        self._shares.clear()  # this process's own writes re-plan its next filtered searches

    def _level(self) -> str:
        recent = time.monotonic() - self._last_write < STRONG_AFTER_WRITE
        return "Strong" if recent else CONSISTENCY

    def _call(self, what: str, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if kwargs.setdefault("timeout", READ_SECONDS if what in _QUICK else CALL_SECONDS) is None:
            del kwargs["timeout"]  # an iterator's next() takes none
        if what in _READS:
            kwargs.setdefault("consistency_level", self._level())
        try:
            result = function(*args, **kwargs)
            if what in _WRITES:
                self._wrote()
            return result
        except (CatalogError, TypeError, AttributeError, KeyError):
            raise  # ours, or a bug: not the server's doing
        except Exception as exc:
            cause = _cause(exc)
            unavailable = any(
                word in cause.lower() for word in ("unavailable", "connect", "deadline", "timeout", "refused")
            )
            kind = StorageUnavailableError if unavailable else CatalogError
            raise kind(f"Milvus at {self.location}: {what} failed: {cause}") from exc

    def exists(self) -> bool:
        return bool(self._call("has_collection", self._client.has_collection, self.collection))

    def create(self, dim: int, M: int, ef_construction: int, settings: Mapping[str, str]) -> None:
        """The collection, its index and settings, then the removed-keys collection; loaded."""
        from pymilvus import DataType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("key", DataType.VARCHAR, is_primary=True, max_length=TEXT_MAX)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
        schema.add_field("path", DataType.VARCHAR, max_length=TEXT_MAX)
        schema.add_field("size", DataType.INT64)
        schema.add_field("mtime_ns", DataType.INT64)
        schema.add_field("metadata", DataType.JSON)
        index = self._client.prepare_index_params()
        index.add_index(
            "vector", index_type="HNSW", metric_type="L2", params={"M": M, "efConstruction": ef_construction}
        )
        self._call(
            "create_collection",
            self._client.create_collection,
            self.collection,
            schema=schema,
            index_params=index,
            consistency_level=CONSISTENCY,
        )
        self.set_settings(settings)

    def _create_side(self, name: str, text_fields: Sequence[str] = ()) -> None:
        """A small side collection keyed like the catalog (removed keys, feed owners): Milvus
        needs a vector field in every collection, so each row carries a 2-d dummy one."""
        from pymilvus import DataType, MilvusClient

        if self._call("has_collection", self._client.has_collection, name):
            return
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("key", DataType.VARCHAR, is_primary=True, max_length=TEXT_MAX)
        for text in text_fields:
            schema.add_field(text, DataType.VARCHAR, max_length=TEXT_MAX)
        schema.add_field("flag", DataType.FLOAT_VECTOR, dim=2)
        index = self._client.prepare_index_params()
        index.add_index("flag", index_type="FLAT", metric_type="L2")
        self._call(
            "create_collection",
            self._client.create_collection,
            name,
            schema=schema,
            index_params=index,
            consistency_level=CONSISTENCY,
        )

    def load(self) -> None:
        """Make sure the collections are loaded (a no-op when they are: loads are never undone)."""
        for name in (self.collection, self.removed_collection, self.feeds_collection):
            if name != self.collection and not self._has_side(name):
                continue
            state = self._call("get_load_state", self._client.get_load_state, name)
            if "Loaded" not in str(state.get("state")):
                self._call("load_collection", self._client.load_collection, name)

    def flush(self) -> None:
        """Seal what was written into segments, so the engine builds its index over them (the
        server does so by itself after a while; a bulk load should not wait for that)."""
        self._call("flush", self._client.flush, self.collection)

    def indexed(self) -> tuple[int, int]:
        """``(items searched through the engine's index, items)``. Until a segment is sealed,
        indexed and loaded, the 2.3 server searches it through a coarse interim index (IVF,
        16 of 128 lists by default), whose recall on clustered vectors is poor: benchmarks and
        checks wait for this to reach the item count."""
        from pymilvus import utility
        from pymilvus.grpc_gen.common_pb2 import SegmentState  # type: ignore[import-untyped]

        segments = self._call(
            "describe_index",
            utility.get_query_segment_info,
            self.collection,
            using=self._client._using,
        )
        served = sum(int(s.num_rows) for s in segments if s.index_name and s.state == SegmentState.Sealed)
        return served, self.count()

    def drop(self) -> None:
        for name in (self.collection, self.removed_collection, self.feeds_collection):
            if self._call("has_collection", self._client.has_collection, name):
                self._call("drop_collection", self._client.drop_collection, name)
        self._sides.clear()

    def close(self) -> None:
        try:
            self._client.close()
        except Exception:  # closing a broken channel: nothing left to release
            log.debug("closing the Milvus client of %s failed", self.location, exc_info=True)

    # -- settings ---------------------------------------------------------------------------------

    def settings(self) -> dict[str, str]:
        described = self._call("describe_collection", self._client.describe_collection, self.collection)
        properties = described.get("properties") or {}
        return {k[len(PREFIX) :]: str(v) for k, v in properties.items() if k.startswith(PREFIX)}

    def dim(self) -> int:
        described = self._call("describe_collection", self._client.describe_collection, self.collection)
        for field in described["fields"]:
            if field["name"] == "vector":
                return int(field["params"]["dim"])
        raise CatalogError(f"{self.location} has no vector field: it is not a fashionrec catalog")

    def set_settings(self, values: Mapping[str, str]) -> None:
        properties = {PREFIX + name: str(value) for name, value in values.items()}
        self._call(
            "alter_collection_properties",
            self._client.alter_collection_properties,
            self.collection,
            properties=properties,
        )

    # -- writing ----------------------------------------------------------------------------------

    def write(self, items: Sequence[NewItem]) -> None:
        """Upserts (every row checked before any is sent), then each item's owner (its ``feed``),
        then its key is no longer removed by hand. A crash in between leaves an item without its
        owner, which the feed's next sync claims back by its path."""
        rows = [row_of(item) for item in items]
        for start in range(0, len(rows), WRITE_BATCH):
            self._call("upsert", self._client.upsert, self.collection, rows[start : start + WRITE_BATCH])
        for feed in dict.fromkeys(item.feed for item in items):
            self.set_feed([item.key for item in items if item.feed == feed], feed)
        self.forget_removed([item.key for item in items])

    def remove(self, keys: Sequence[str]) -> list[str]:
        """Items and then their owners (a stale owner of an absent key is ignored)."""
        present = list(self.fetch(list(dict.fromkeys(keys))))
        self._delete_keys(self.collection, present)
        self.set_feed(present, None)
        return present

    def _query_keys(
        self, collection: str, keys: Sequence[str], fields: list[str], condition: str | None = None
    ) -> list[dict[str, Any]]:
        """The rows of ``collection`` holding ``keys`` (and passing ``condition``), in batches a
        server takes in one expression."""
        rows: list[dict[str, Any]] = []
        for start in range(0, len(keys), GET_BATCH):
            chunk = keys[start : start + GET_BATCH]
            wanted = expr.keys_in(chunk)
            rows += self._call(
                "get",
                self._client.query,
                collection,
                filter=wanted if condition is None else expr.both(wanted, condition),
                output_fields=fields,
                limit=len(chunk),
            )
        return rows

    def _delete_keys(self, collection: str, keys: Sequence[str]) -> None:
        for start in range(0, len(keys), GET_BATCH):
            chunk = keys[start : start + GET_BATCH]
            self._call("delete", self._client.delete, collection, filter=expr.keys_in(chunk))

    def _has_side(self, name: str) -> bool:
        """Whether a side collection exists (each is made on first need: creating and loading a
        collection takes seconds on the 2.3 server, and most catalogs never need them)."""
        if name not in self._sides and self._call("has_collection", self._client.has_collection, name):
            self._sides.add(name)
        return name in self._sides

    def _has_removed(self) -> bool:
        return self._has_side(self.removed_collection)

    def remember_removed(self, keys: Sequence[str]) -> None:
        if not self._has_removed():
            self._create_side(self.removed_collection)
            self._sides.add(self.removed_collection)
        rows = [{"key": key, "flag": [0.0, 0.0]} for key in keys]
        for start in range(0, len(rows), GET_BATCH):
            self._call(
                "upsert", self._client.upsert, self.removed_collection, rows[start : start + GET_BATCH]
            )

    def forget_removed(self, keys: Sequence[str]) -> None:
        if self._has_removed():
            self._delete_keys(self.removed_collection, list(keys))

    def removed_keys(self, among: Sequence[str] | None = None) -> list[str]:
        if not self._has_removed():
            return []
        if among is None:
            return [row["key"] for rows in self._scan(self.removed_collection, "", ["key"]) for row in rows]
        return [row["key"] for row in self._query_keys(self.removed_collection, list(among), ["key"])]

    def set_feed(self, keys: Sequence[str], feed: str | None) -> None:
        """Record ``feed`` (a feed's key prefix) as the owner of these items, or (None) no owner.
        Owners live in ``<collection>__feeds``: a catalog written before owners were recorded
        has none, and a sync then recognises its items by their paths (as on a local catalog)."""
        keys = list(dict.fromkeys(keys))
        if feed is None:
            if self._has_side(self.feeds_collection):
                self._delete_keys(self.feeds_collection, keys)
            return
        if not keys:
            return
        if not self._has_side(self.feeds_collection):
            self._create_side(self.feeds_collection, ["feed"])
            self._sides.add(self.feeds_collection)
        rows = [{"key": key, "feed": feed, "flag": [0.0, 0.0]} for key in keys]
        for start in range(0, len(rows), GET_BATCH):
            self._call("upsert", self._client.upsert, self.feeds_collection, rows[start : start + GET_BATCH])

    def feed_owners(self, keys: Sequence[str]) -> dict[str, str]:
        """``key -> feed`` for the keys that have an owner recorded (held or not)."""
        if not self._has_side(self.feeds_collection):
            return {}
        rows = self._query_keys(self.feeds_collection, list(keys), ["key", "feed"])
        return {row["key"]: row["feed"] for row in rows}

    def keys_of_feed(self, feed: str) -> list[str]:
        """Keys recorded as ``feed``'s (held or not: the caller checks)."""
        if not self._has_side(self.feeds_collection):
            return []
        condition = f"feed == {expr.literal(feed)}"
        return [row["key"] for rows in self._scan(self.feeds_collection, condition, ["key"]) for row in rows]

    # -- reading ----------------------------------------------------------------------------------

    def count(self) -> int:
        rows = self._call("count", self._client.query, self.collection, filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"])

    def fetch(self, keys: Sequence[str], vectors: bool = False) -> dict[str, tuple[dict[str, Any], Any]]:
        out: dict[str, tuple[dict[str, Any], Any]] = {}
        fields = FIELDS + (["vector"] if vectors else [])
        keys = [key for key in keys if isinstance(key, str) and len(key.encode()) <= TEXT_MAX]
        for row in self._query_keys(self.collection, keys, fields):
            out[row["key"]] = (described(row), vector_of(row) if vectors else None)
        return out

    def iterate(
        self, wanted: Mapping[str, Any] | None = None, vectors: bool = False, batch: int = 1000
    ) -> Iterator[list[tuple[str, dict[str, Any], Any]]]:
        fields = FIELDS + (["vector"] if vectors else [])
        condition = expr.metadata_filter(wanted) if wanted else ""
        for rows in self._scan(self.collection, condition, fields, batch):
            yield [(row["key"], described(row), vector_of(row) if vectors else None) for row in rows]

    def keys_with_field(self, field: str, values: Sequence[str]) -> list[str]:
        if not values:
            return []
        condition = expr.condition(field, list(values))
        return [row["key"] for rows in self._scan(self.collection, condition, ["key"]) for row in rows]

    def _scan(
        self, collection: str, condition: str, fields: list[str], batch: int = GET_BATCH
    ) -> Iterator[list[dict[str, Any]]]:
        """Every row passing ``condition``, in key order, a page at a time (``key > last``).

        pymilvus' query_iterator does the same but spends over a second per page on the 2.3
        server (it asks for a fresh timestamp each time); a page here costs milliseconds."""
        batch = max(1, min(int(batch), TOP_K_MAX))
        last: str | None = None
        while True:
            after = f"key > {expr.literal(last)}" if last is not None else 'key != ""'
            rows = self._call(
                "query",
                self._client.query,
                collection,
                filter=expr.both(condition, after),
                output_fields=fields,
                limit=batch,
            )
            rows.sort(key=lambda row: row["key"])
            if rows:
                yield rows
            if len(rows) < batch:
                return
            last = rows[-1]["key"]

    def top_k(
        self, vector: np.ndarray, k: int, wanted: Mapping[str, Any] | None, exclude: Sequence[str], ef: int
    ) -> list[Neighbour]:
        """The k nearest items passing the filter. A filter that lets few items through
        (`BRUTE_SHARE` or less) goes to the engine with the search, which then scans them all;
        a broader one is answered by over-fetching: the nearest items without the filter, then
        the engine tells which of them pass (see `_overfetched`)."""
        limit = min(int(k), TOP_K_MAX)
        unwanted = expr.keys_not_in(exclude)
        if not wanted:
            return self._search(vector, limit, unwanted, ef)
        condition = expr.metadata_filter(wanted)
        matching, total = self._matching(condition)
        share = matching / max(total, 1)
        if share > BRUTE_SHARE:
            found = self._overfetched(vector, limit, condition, unwanted, len(exclude), share, ef)
            if found is not None:
                return found
        return self._search(vector, limit, expr.both(condition, unwanted), ef)

    def _search(self, vector: np.ndarray, limit: int, condition: str, ef: int) -> list[Neighbour]:
        results = self._call(
            "search",
            self._client.search,
            self.collection,
            data=[np.asarray(vector, np.float32).tolist()],
            filter=condition,
            limit=limit,
            output_fields=["key"],
            search_params={"metric_type": "L2", "params": {"ef": max(int(ef), limit)}},
        )
        return [Neighbour(str(hit["id"]), float(hit["distance"])) for hit in results[0]]

    def _matching(self, condition: str) -> tuple[int, int]:
        """How many items pass ``condition``, and how many there are: counted by the engine,
        remembered for `SHARE_SECONDS` (a service asks for the same few filters again and again;
        a share that moved since only changes how the next search is planned, never which items
        pass; this process's own writes forget every count)."""
        now = time.monotonic()
        known = self._shares.get(condition)
        if known is not None and now - known[0] < SHARE_SECONDS:
            return known[1], known[2]
        rows = self._call(
            "count", self._client.query, self.collection, filter=condition, output_fields=["count(*)"]
        )
        matching, total = int(rows[0]["count(*)"]), self.count()
        if len(self._shares) >= SHARES_KEPT:
            self._shares.clear()
        self._shares[condition] = (now, matching, total)
        return matching, total

    def _overfetched(
        self,
        vector: np.ndarray,
        limit: int,
        condition: str,
        unwanted: str,
        excluded: int,
        share: float,
        ef: int,
    ) -> list[Neighbour] | None:
        """The ``limit`` nearest passing items among the nearest unfiltered ones, or None when
        too many would have to be fetched (the caller then lets the engine filter).

        Why: the Milvus 2.3 server's HNSW search with a filter that a tenth of the items pass
        missed nearly half the true neighbours (recall@5 0.56 at 20,000 items, whatever ``ef``),
        as its graph walk stops among filtered-out nodes. Unfiltered, its recall is 1.0. If
        ``limit`` of the fetched items pass, they are the true filtered top ``limit`` of what the
        index found: any closer passing item would be among the fetched ones too."""
        fetch = int(np.ceil((limit + excluded) / share * OVERFETCH))
        while fetch <= TOP_K_MAX:
            found = self._search(vector, fetch, unwanted, ef)
            rows = self._query_keys(self.collection, [n.key for n in found], ["key"], condition)
            passing = {row["key"] for row in rows}
            kept = [n for n in found if n.key in passing]
            if len(kept) >= limit or len(found) < fetch:
                return kept[:limit]
            fetch *= 4
        return None

    def top_k_many(self, vectors: np.ndarray, k: int, ef: int) -> list[list[Neighbour]]:
        """The k nearest items (approximate) of each of several vectors, no filter: a few
        search calls of `SEARCH_BATCH` vectors each, not one per vector."""
        limit = min(int(k), TOP_K_MAX)
        out: list[list[Neighbour]] = []
        for start in range(0, len(vectors), SEARCH_BATCH):
            block = np.asarray(vectors[start : start + SEARCH_BATCH], np.float32)
            results = self._call(
                "search",
                self._client.search,
                self.collection,
                data=block.tolist(),
                limit=limit,
                output_fields=["key"],
                search_params={"metric_type": "L2", "params": {"ef": max(int(ef), limit)}},
            )
            out += [[Neighbour(str(hit["id"]), float(hit["distance"])) for hit in hits] for hits in results]
        return out


def _cause(exc: BaseException) -> str:
    """pymilvus' message on one line, without its ``<MilvusException: (code=...)>`` wrapping."""
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    return " ".join(str(message).split())[:500]
