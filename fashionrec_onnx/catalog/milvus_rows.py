"""Items as rows of a Milvus catalog collection, and back (see `milvus_backend` for the schema).

None has no place in a typed Milvus field: a missing path is ``''``, a missing size or mtime -1.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import CatalogError
from .store import NewItem, metadata_text

TEXT_MAX = 65_535  # Milvus' longest VARCHAR (bytes)
FIELDS = ["key", "path", "size", "mtime_ns", "metadata"]


def row_of(item: NewItem) -> dict[str, Any]:
    """The gate every write passes: metadata JSON cannot hold finitely is refused, naming the item
    and field, before anything reaches the server (as a local catalog's `core.write` does)."""
    path = item.path or ""
    if len(path.encode()) > TEXT_MAX or len(item.key.encode()) > TEXT_MAX:
        raise CatalogError(f"a key or path longer than {TEXT_MAX} bytes cannot be stored in Milvus")
    metadata_text(item.key, item.metadata)  # the local store's check and wording
    return {
        "key": item.key,
        "vector": np.asarray(item.vector, np.float32).tolist(),
        "path": path,
        "size": -1 if item.size is None else int(item.size),
        "mtime_ns": -1 if item.mtime_ns is None else int(item.mtime_ns),
        "metadata": dict(item.metadata or {}),
    }


def described(row: Mapping[str, Any]) -> dict[str, Any]:
    size, mtime = int(row.get("size", -1)), int(row.get("mtime_ns", -1))
    return {
        "path": row.get("path") or None,
        "size": None if size < 0 else size,
        "mtime_ns": None if mtime < 0 else mtime,
        "metadata": dict(row.get("metadata") or {}),
    }


def vector_of(row: Mapping[str, Any]) -> np.ndarray:
    return np.asarray(row["vector"], np.float32)
