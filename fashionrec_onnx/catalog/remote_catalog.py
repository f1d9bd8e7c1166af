"""`RemoteCatalog`: `Catalog` over a storage `backend.Backend` (Milvus). What it is, what it
holds and the writes; its searches are `remote_search`'s, creating and opening it `remote`'s (whose
docstring says what a remote catalog does differently)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ..embedder import Embedder
from ..errors import BadArgumentError, CatalogError, UnknownKeyError
from ..model import ModelInfo, recorded_fingerprint
from . import jobs, products
from .answering import is_vector, shown, unit
from .backend import Backend
from .hnsw import DEFAULT_EF, DEFAULT_EF_CONSTRUCTION, DEFAULT_M, HnswParams
from .location import MilvusLocation
from .opening import compare_probe, load_recorded_model
from .remote_search import RemoteSearching, stored_item
from .reports import IndexReport
from .store import Item, NewItem
from .writing import new_items


class RemoteCatalog(RemoteSearching):
    """A catalog whose items, vectors and settings live behind a `Backend` (Milvus)."""

    def __init__(
        self,
        backend: Backend,
        location: MilvusLocation,
        info: ModelInfo,
        settings: dict[str, str],
        model_path: Path,
        embedder: Embedder | None,
        threads: int | None,
        readonly: bool,
    ) -> None:
        self._backend = backend
        self._info = info
        self._settings = settings
        self.path = location  # type: ignore[assignment]  # shown without its password
        self.model_path = model_path
        self._embedder = embedder
        self._embedder_lock = threading.Lock()
        self._threads = threads
        self._readonly = readonly
        self._closed = False
        self._probed = False
        self._groups: tuple[float, int, dict[str, int]] | None = None  # see `_duplicate_groups`

    # -- what the catalog is -------------------------------------------------------------------

    @property
    def backend(self) -> Backend:
        return self._backend

    @property
    def info(self) -> ModelInfo:
        return self._info

    @property
    def model_fingerprints(self) -> frozenset[str]:
        """``info.fingerprint``, and the one recorded at creation if an earlier scheme computed it."""
        recorded = recorded_fingerprint(
            {k[len("model.") :]: v for k, v in self._settings.items() if k.startswith("model.")}
        )
        return frozenset({self._info.fingerprint, recorded or self._info.fingerprint})

    @property
    def dim(self) -> int:
        return self._info.dim

    def _setting(self, name: str, default: str = "") -> str:
        return self._settings.get(name, default)

    def _refresh(self) -> None:
        """Settings another process may have changed (product field, ef)."""
        self._settings = self._backend.settings()

    @property
    def params(self) -> HnswParams:
        return HnswParams(
            int(self._setting("hnsw.M", str(DEFAULT_M))),
            int(self._setting("hnsw.ef_construction", str(DEFAULT_EF_CONSTRUCTION))),
            int(self._setting("hnsw.ef", str(DEFAULT_EF))),
        )

    @property
    def readonly(self) -> bool:
        return self._readonly

    @property
    def generation(self) -> int:
        """A remote catalog keeps no change counter: the engine is the state (always 0)."""
        return 0

    @property
    def product_field(self) -> str | None:
        self._refresh()
        return self._setting(products.SETTING) or None

    @property
    def graph_dim(self) -> int:
        return self.dim

    @property
    def reduction(self) -> None:
        return None

    def left_out_of_graph(self) -> list[str]:
        """Nothing: every vector the engine holds passed the finite unit-vector gate."""
        return []

    def require_writable(self, what: str) -> None:
        """Refuse ``what`` before any work on a catalog opened read-only (the server's own
        permissions are checked by the server at the first write)."""
        if self._readonly:
            raise CatalogError(f"{self.path} was opened read-only, and {what} changes it; nothing was done.")

    def feed_keys(self, key_prefix: str) -> list[str]:
        """Keys of the items the feed with this key prefix added (its owner records, for items
        still held): the only ones its sync may remove."""
        if not key_prefix:
            return []
        recorded = [key for key in self._backend.keys_of_feed(key_prefix) if key.startswith(key_prefix)]
        return sorted(self._backend.fetch(recorded))

    def feed_owners(self, keys: Iterable[str]) -> dict[str, str | None]:
        """For the keys held: the key prefix of the feed that owns each item, or None."""
        held = list(self._backend.fetch(list(keys)))
        owners = self._backend.feed_owners(held)
        return {key: owners.get(key) for key in held}

    def claim_for_feed(self, key_prefix: str, keys: Iterable[str]) -> int:
        """Record the feed as the owner of existing items (written before owners were recorded);
        returns how many were not recorded yet."""
        self.require_writable("recording a feed's items")
        owners = self.feed_owners(keys)
        unclaimed = [key for key, owner in owners.items() if owner != key_prefix]
        self._backend.set_feed(unclaimed, key_prefix)
        return len(unclaimed)

    def _writable(self) -> None:
        if self._readonly:
            raise CatalogError(
                f"{self.path} was opened read-only; open it without readonly=True to change it"
            )

    def set_product_field(self, field: str | None) -> None:
        self._writable()
        field = products.checked_field(field)
        self._backend.set_settings({products.SETTING: field or ""})
        self._refresh()

    def product_count(self) -> int | None:
        field = self.product_field
        if field is None:
            return None
        seen: set[str] = set()
        alone = 0
        for batch in self._backend.iterate():
            for _, row, _ in batch:
                value = row["metadata"].get(field)
                if value is None:
                    alone += 1
                else:
                    seen.add(str(value))
        return len(seen) + alone

    def set_ef(self, ef: int) -> None:
        self._writable()
        HnswParams(self.params.M, self.params.ef_construction, ef)  # validates
        self._backend.set_settings({"hnsw.ef": str(ef)})
        self._refresh()

    @property
    def embedder(self) -> Embedder:
        """The model, loaded on first use: the one given on open, else the recorded path when it
        exists here; checked against the recorded fingerprint and probe embedding."""
        with self._embedder_lock:
            if self._embedder is None:
                self._embedder = load_recorded_model(
                    self.model_path, self._info.fingerprint, str(self.path), self._threads
                )
            if not self._probed:
                self._check_probe(self._embedder)
                self._probed = True
            return self._embedder

    def _check_probe(self, embedder: Embedder) -> None:
        record = None if self._readonly else self._backend.set_settings
        compare_probe(embedder, self._setting("model.probe"), record, self.path)

    def save(self) -> None:
        """Every write is in the engine when it returns; this seals it, so the engine indexes it
        now rather than when the server next seals on its own (call it after a bulk load)."""
        if not self._readonly:
            self._backend.flush()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._backend.close()

    # -- contents ------------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._backend.count()

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and bool(self._backend.fetch([key]))

    def iter_items(self) -> Iterator[Item]:
        for batch in self._backend.iterate():
            for key, row, _ in batch:
                yield stored_item(key, row)

    def keys(self, prefix: str | None = None) -> list[str]:
        keys = [item.key for item in self.iter_items()]
        return sorted(key for key in keys if not prefix or key.startswith(prefix))

    def paths_under(self, folder: str | os.PathLike[str]) -> list[str]:
        below = str(folder).rstrip("/") + "/"
        return [item.path for item in self.iter_items() if item.path and item.path.startswith(below)]

    def get(self, key: str) -> Item:
        found = self._backend.fetch([key]) if isinstance(key, str) else {}
        if key not in found:
            raise UnknownKeyError(f"no item with key {shown(str(key))} in {self.path}.")
        return stored_item(key, found[key][0])

    def get_many(self, keys: Iterable[str]) -> dict[str, Item]:
        found = self._backend.fetch(list(keys))
        return {key: stored_item(key, row) for key, (row, _) in found.items()}

    def vector(self, key: str) -> np.ndarray:
        return self.vectors([key])[0]

    def vectors(self, keys: Iterable[str]) -> np.ndarray:
        keys = list(keys)
        found = self._backend.fetch(keys, vectors=True)
        missing = [key for key in keys if key not in found]
        if missing:
            raise UnknownKeyError(
                f"no item with key {shown(missing[0])} in {self.path} ({len(missing)} unknown)."
            )
        if not keys:
            return np.zeros((0, self.dim), np.float32)
        return np.stack([found[key][1] for key in keys]).astype(np.float32)

    def categories(self, field: str = "category") -> list[str]:
        values = {str(item.metadata[field]) for item in self.iter_items() if field in item.metadata}
        return sorted(values)

    def summary(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "backend": "milvus",
            "items": len(self),
            "model_path": str(self.model_path),
            "model_fingerprint": self.info.fingerprint,
            "weights": self.info.weights,
            "precision": self.info.precision,
            "input_size": self.info.input_size,
            "resize": self.info.resize,
            "dim": self.dim,
            "M": self.params.M,
            "ef_construction": self.params.ef_construction,
            "ef": self.params.ef,
            "index": "HNSW (L2) in Milvus",
            "graph_dim": self.dim,
            "reduction": None,
            "vector_dtype": "float32",
            "product_field": self.product_field,
        }

    # -- writing -------------------------------------------------------------------------------

    def _write(self, new: list[NewItem], feed: str | None = None) -> None:
        """Items owned by ``feed``, or by none: an item written again by a folder or by hand is
        no feed's, as on a local catalog (the backend records owners and forgets removals)."""
        self._writable()
        self._groups = None
        self._backend.write([replace(item, feed=feed) for item in new])

    def add(
        self,
        key: str,
        image_or_vector: Any,
        *,
        path: str | os.PathLike[str] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        if is_vector(image_or_vector):
            vector = unit(image_or_vector, self.dim)
        else:
            vector = self.embedder.embed_one(image_or_vector)
            if path is None and isinstance(image_or_vector, (str, os.PathLike)):
                path = Path(image_or_vector).expanduser().resolve()
        self._write([NewItem(key, vector, str(path) if path else None, metadata=dict(metadata or {}))])

    def add_many(
        self,
        keys: Iterable[str],
        vectors: np.ndarray,
        *,
        paths: Iterable[str | None] | None = None,
        metadata: Iterable[Mapping[str, Any] | None] | None = None,
        sizes: Iterable[int | None] | None = None,
        mtimes_ns: Iterable[int | None] | None = None,
        feed: str | None = None,
    ) -> int:
        keys = list(keys)
        if any(not isinstance(key, str) or not key for key in keys):
            raise BadArgumentError("every key must be a non-empty string")
        new = new_items(self.dim, keys, vectors, paths, metadata, sizes, mtimes_ns)
        if any(not np.all(np.isfinite(item.vector)) for item in new):
            raise CatalogError(
                "a vector is zero or holds NaN or infinite values; nothing of the batch was written"
            )
        known = self._backend.fetch(keys)
        self._write(new, feed)
        return len(keys) - len(known)

    def remove(self, *keys: str, remember: bool = True) -> int:
        self._writable()
        keys = tuple(key for key in keys if isinstance(key, str))
        present = list(self._backend.fetch(list(keys)))
        if remember and present:  # remembered first: a crash in between leaves the item present
            self._backend.remember_removed(present)
        return len(self._backend.remove(present))

    def removed_keys(self) -> list[str]:
        return self._backend.removed_keys()

    def update_metadata(self, metadata: Mapping[str, Mapping[str, Any]]) -> int:
        self._writable()
        values = {str(key): dict(fields) for key, fields in metadata.items()}
        found = self._backend.fetch(list(values), vectors=True)
        owners = self._backend.feed_owners(list(found))  # kept: new metadata is no new owner
        changed = [
            NewItem(key, vector, row["path"], row["size"], row["mtime_ns"], values[key], owners.get(key))
            for key, (row, vector) in found.items()
            if row["metadata"] != values[key]
        ]
        self._backend.write(changed)
        return len(changed)

    def rebuild(self) -> list[str]:
        """The engine keeps its own index: nothing to rebuild here, and nothing left out (every
        write passed the finite unit-vector gate)."""
        return []

    def index_folder(self, folder: str | os.PathLike[str], **options: Any) -> IndexReport:
        """See `Catalog.index_folder`; done by `feeds.folders` over the backend (registered in `jobs`)."""
        report: IndexReport = jobs.job("index_folder")(self, folder, **options)
        self._groups = None  # it wrote through the backend: the near-duplicate groups are stale
        return report

    def reduce(self, dim: int | None, **options: Any) -> None:
        raise CatalogError(f"PCA reduction is not available on a Milvus catalog ({self.path})")
