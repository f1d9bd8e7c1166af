"""`CatalogWriter`: the writes of `Catalog` (adding, removing, rewriting metadata, settings), and
reshaping it (rebuilding the graph, a PCA reduction, fitted by itself when planned at creation)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BadArgumentError, CatalogError, DiskFullError
from ..images import Source
from . import maintenance, products, removals, thumbnails
from .answering import is_vector, unit
from .hnsw import HnswParams
from .kernels import normalised, row_norms
from .pca import PCA
from .reading import CatalogReader
from .store import NewItem

log = logging.getLogger(__name__)

REDUCE_AFTER = 20_000  # a planned PCA is fitted once the catalog holds this many items


def is_whole(value: object, least: int) -> bool:
    """An int (numpy's too, never a bool) of at least ``least``: what a stored count may be."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and bool(value >= least)


class CatalogWriter(CatalogReader):
    """The writes of `Catalog` (see there)."""

    def set_product_field(self, field: str | None) -> None:
        """Name the metadata field that identifies the product (``None``: no products). Recorded
        in the catalog; every process that has it open takes it in at its next search."""
        field = products.checked_field(field)
        self.require_writable("a change of the product field")
        self._core.set_settings({products.SETTING: field or ""})
        if field is not None and len(self) and field not in self._core.store.field_names():
            log.warning(
                "no item of %s has the metadata field %r yet; until some do, each item is its own product",
                self.path,
                field,
            )

    def save(self) -> None:
        """Write the graph atomically under a new name, then record it; old files are removed."""
        self._core.save()

    def close(self) -> None:
        """Save the graph if it changed, release files. The catalog is consistent without it."""
        if self._closed:
            return
        self._closed = True
        self._core.close()

    # -- writing --------------------------------------------------------------------------------------

    def claim_for_feed(self, key_prefix: str, keys: Iterable[str]) -> int:
        """Record the feed with this key prefix as the owner of existing items (a feed's rows
        that an older version synced); returns how many were not recorded yet."""
        self.require_writable("recording a feed's items")
        with self._core.writing():
            return self._core.store.claim_for_feed(key_prefix, list(keys))

    def set_ef(self, ef: int) -> None:
        """Trade speed for recall at search time; persisted (hnswlib itself forgets ef)."""
        HnswParams(self.params.M, self.params.ef_construction, ef)  # validates
        self._core.set_settings({"hnsw.ef": str(ef)})

    def add(
        self,
        key: str,
        image_or_vector: Source,
        *,
        path: str | os.PathLike[str] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        """Add one item (an image, or a ready vector); an existing key is replaced."""
        if is_vector(image_or_vector):
            vector = unit(image_or_vector, self.dim)  # type: ignore[arg-type]
        else:
            vector = self.embedder.embed_one(image_or_vector)
            if path is None and isinstance(image_or_vector, (str, os.PathLike)):
                path = Path(image_or_vector).expanduser().resolve()
        self._core.write([NewItem(key, vector, str(path) if path else None, metadata=dict(metadata or {}))])
        if path is not None and not is_vector(image_or_vector):  # as folder indexing keeps them
            thumbnails.keep_files(self._core, [key])

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
        """Add ready vectors in one transaction (for vectors computed elsewhere); existing keys
        are replaced. Unit vectors are stored exactly as given, others normalised; a zero, NaN or
        wrong-width vector fails the batch. ``sizes`` and ``mtimes_ns`` (of the image files) let
        a later `index_folder` of the same files know they are unchanged. ``feed`` (a feed's key
        prefix, given by `sync`) records that feed as the items' owner: only its sync removes them."""
        new = new_items(self.dim, keys, vectors, paths, metadata, sizes, mtimes_ns, feed)
        # A batch that brings a planned catalog to its PCA goes into no full-dimension graph:
        # the reduction replaces that graph at once.
        deferred = self._planned() is not None and self._core.count + len(new) >= REDUCE_AFTER
        added = len(self._core.write(new, graph=not deferred)[0])
        self._reduce_when_planned()
        return added

    def _planned(self) -> int | None:
        """The planned PCA's dimension while it is not fitted yet (see `create`'s ``reduce_to``)."""
        planned = self._core.store.get_setting("reduction.planned") or ""
        return int(planned) if planned and self._core.reduction is None else None

    def _reduce_when_planned(self) -> None:
        """Fit the planned PCA once enough items are in (see `create`'s ``reduce_to``)."""
        planned = self._planned()
        core = self._core
        if planned is None or core.count < REDUCE_AFTER:
            if core.graph.index is not None and core.graph.generation != core.generation:
                with core.writing():  # a deferred batch that did not reach the reduction after all
                    core.graph_catch_up()
            return
        log.info(
            "%s holds %d items: fitting the planned PCA to %s dimensions", self.path, core.count, planned
        )
        try:
            self.reduce(planned)
        finally:
            if core.graph.index is not None and core.graph.generation != core.generation:
                with core.writing():  # the reduction failed: the full graph takes the batch in
                    core.graph_catch_up()

    def remove(self, *keys: str, remember: bool = True) -> int:
        """Remove items by key; unknown or already removed keys are ignored. Returns how many went.

        Removals stick: `index_folder` does not add a removed key back unless asked
        (``readd_removed=True``); `add` or `add_many` of the key does (see `removals`).
        ``remember=False`` removes the way ``prune`` does (the file is gone; if it comes back,
        it is indexed again)."""
        self.require_writable("a removal")
        if (odd := next((key for key in keys if not isinstance(key, str)), None)) is not None:
            raise BadArgumentError(f"keys are text; got {odd!r}, nothing was removed")
        if not remember:
            return removals.forget(self._core, keys)
        return removals.remove(self._core, keys)

    def update_metadata(self, metadata: Mapping[str, Mapping[str, Any]]) -> int:
        """Replace the metadata of existing items in place (no re-embedding); unknown keys are
        ignored. Returns how many items changed."""
        self.require_writable("a metadata update")
        for key, fields in metadata.items():
            if not isinstance(fields, Mapping):
                raise BadArgumentError(
                    f"item {key!r}: metadata is a mapping of field names to values, not a "
                    f"{type(fields).__name__}; nothing was written"
                )
        values = {str(key): dict(fields) for key, fields in metadata.items()}
        return self._core.rewrite(lambda: self._core.store.update_metadata(values))

    def rebuild(self) -> list[str]:
        """Recreate the HNSW graph from the stored vectors (no re-embedding). Returns the keys of
        items left out because their stored vector is not finite (a damaged vector file; see
        `left_out_of_graph`)."""
        with self._core.writing():
            self._core.fresh_graph()
        self._core.save()
        return self.left_out_of_graph()

    # -- reshaping ------------------------------------------------------------------------------------

    def reduce(
        self, dim: int | None, *, whiten: bool = False, sample: int = 50_000, seed: int = 0
    ) -> PCA | None:
        """Index a PCA projection of the vectors (``dim=None`` goes back to full vectors).

        The PCA is fitted on (a sample of) the catalog's own vectors and saved beside it; queries
        are projected automatically and hits re-ranked with the full vectors.
        """
        core = self._core
        if dim is not None and not is_whole(dim, 1):
            raise BadArgumentError(f"a reduction is to a whole number of dimensions, got {dim!r}")
        self.require_writable("a reduction" if dim is not None else "a return to full vectors")
        with core.writing():
            if dim is None:
                name, pca = "", None
            else:
                pca, name = maintenance.fit_reduction(core, dim, whiten, sample, seed)
            core.store.set_settings({"reduction.file": name}, bump=True)
            core.generation = core.store.generation
            core.reduction_file, core.reduction = name or None, pca
            for old in self.path.glob("pca-*.npz"):
                if old.name != name:
                    old.unlink(missing_ok=True)
            core.ensure_tier()
            core.fresh_graph()
        try:
            core.save()
        except DiskFullError as exc:
            raise DiskFullError(
                f"the disk holding {self.path} is full: the new graph could not be saved ({exc.__cause__}). "
                f"The {'reduction' if pca is not None else 'return to full vectors'} is recorded and the "
                "stored items are intact, but the graph must be rebuilt: free some space and run "
                f"`fashionrec rebuild --catalog {self.path}`."
            ) from exc
        return pca


def new_items(
    dim: int,
    keys: Iterable[str],
    vectors: np.ndarray,
    paths: Iterable[str | None] | None = None,
    metadata: Iterable[Mapping[str, Any] | None] | None = None,
    sizes: Iterable[int | None] | None = None,
    mtimes_ns: Iterable[int | None] | None = None,
    feed: str | None = None,
) -> list[NewItem]:
    """`add_many`'s arguments as items to write, on any backend: one vector of ``dim`` per key,
    keys unique, vectors unit length (those already unit kept bit for bit; the others normalised
    with float64 norms, so values near 3e38 do not overflow; a row with no direction comes out
    NaN, for the write's gate to refuse)."""
    keys = list(keys)
    vectors = np.asarray(vectors)  # normalised before float32: 1e39 is finite in float64
    if vectors.shape != (len(keys), dim):
        raise CatalogError(f"expected vectors of shape ({len(keys)}, {dim}), got {vectors.shape}")
    if len(set(keys)) != len(keys):
        raise CatalogError("add_many got the same key twice in one batch; keys must be unique")
    off = ~(np.abs(row_norms(vectors)[:, None] - 1.0) <= 1e-6)
    if off.any():
        vectors = np.where(off, normalised(vectors), vectors)
    vectors = vectors.astype(np.float32, copy=False)
    columns = [
        list(values) if values is not None else [None] * len(keys)
        for values in (paths, metadata, sizes, mtimes_ns)
    ]
    return [
        NewItem(k, v, p, s, t, metadata=dict(m) if isinstance(m, Mapping) else m or {}, feed=feed)
        for k, v, p, m, s, t in zip(keys, vectors, *columns)
    ]
