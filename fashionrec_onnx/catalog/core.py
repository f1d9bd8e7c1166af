"""The open catalog's moving parts and the rules that keep them in step.

`CatalogCore` owns the database, the vector file, the graph, the PCA reduction and the derived
masks, and the locks around them: searches share a read lock; writes take the write lock and an
flock on the catalog's ``.lock`` file (one writer across processes). Every read first catches up
with what other processes committed, through the database's change log.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from ..errors import BadArgumentError, CatalogCorruptError, CatalogError, DiskFullError, ModelError
from ..model import ModelInfo, recorded_fingerprint
from . import products
from .columns import Liveness, MetadataColumns
from .graph import GraphCache
from .hnsw import HnswParams, ReadWriteLock
from .kernels import row_norms, to_float32
from .pca import PCA
from .store import Delta, NewItem, Store, disk_full, is_disk_full, metadata_text
from .tier import Tier, space_name
from .tier import file_name as tier_name
from .vectors import VectorFile

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"


def read_only_refusal(root: Path, what: str) -> CatalogError:
    """The one answer to a write on a catalog open read-only: why, and what to do. A catalog this
    process could write was opened with ``readonly=True`` (the library's or the service's choice);
    otherwise the medium or the permissions are read-only (a command's user meets this one)."""
    if os.access(root, os.W_OK) and os.access(root / "catalog.sqlite", os.W_OK):
        how = "it was opened read-only (readonly=True): open it without readonly=True to change it"
    else:
        how = (
            "this process cannot write it (a read-only disk, or its permissions): run the command "
            "as a user who can write the catalog directory, or copy the catalog to a writable disk"
        )
    return CatalogError(f"{root} is read-only, so {what} was refused and nothing changed: {how}.")
PRUNE_CHANGES_ABOVE = 50_000  # change-log rows kept before a graph save forgets the older ones
UNIT_TOLERANCE = 1e-3
TIER_SAMPLE = 20_000  # stored vectors the int8 scales of a new compact tier are fitted on


def checked_vectors(vectors: np.ndarray, dim: int, keys: Sequence[str]) -> np.ndarray:
    """The one gate every stored vector passes: finite, of the catalog's width, unit length."""
    vectors = np.asarray(vectors)
    if vectors.ndim != 2 or vectors.shape[1] != dim:
        raise CatalogError(
            f"expected vectors of {dim} values, got an array of shape {vectors.shape}; nothing was written"
        )
    vectors = vectors.astype(np.float32, copy=False)
    norms = row_norms(vectors)  # float64: a norm of 1e39 is no overflow; NaN or inf in, not finite out
    bad = ~(np.abs(norms - 1.0) <= UNIT_TOLERANCE)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise CatalogError(
            f"{int(bad.sum())} vector(s) are not finite unit vectors (first: {keys[first]!r}, norm "
            f"{norms[first]:.4g}); nothing was written. A model that gives NaN or unnormalised "
            "embeddings is not the one this catalog was built with."
        )
    return vectors


def _check_text(values: Sequence[str]) -> None:
    """Keys and paths must be text SQLite can store: a file name that is not UTF-8 would fail
    the whole batch deep in the database."""
    for value in values:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            shown = value.encode("utf-8", "backslashreplace").decode()
            raise BadArgumentError(
                f"{shown!r} is not valid UTF-8 text; rename the file or choose another key."
            ) from None


def locked_open(path: Path) -> int:
    """The catalog's lock file, created when missing."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        if is_disk_full(exc):
            raise disk_full(path, exc) from exc
        raise CatalogError(
            f"cannot lock {path} for writing ({exc.strerror}); open the catalog read-only."
        ) from exc


class CatalogCore:
    """Everything an open catalog holds, and the locks that keep it consistent."""

    def __init__(self, root: Path, store: Store, *, readonly: bool) -> None:
        self.root = root
        self.store = store
        self.readonly = readonly
        settings = store.settings()
        try:
            model_settings = {
                k[len("model.") :]: v
                for k, v in settings.items()
                if k.startswith("model.") and k != "model.probe"
            }
            self.info = ModelInfo.from_metadata(model_settings, str(store.path))
            # The fingerprint is computed from the recorded contract, so a catalog written under the
            # earlier scheme opens with today's models; vectors files written then carry the old one.
            recorded = recorded_fingerprint(model_settings)
            self.fingerprints = frozenset({self.info.fingerprint, recorded or self.info.fingerprint})
            self.params = HnswParams(
                int(settings["hnsw.M"]), int(settings["hnsw.ef_construction"]), int(settings["hnsw.ef"])
            )
            vector_file = settings["vectors.file"]
        except (KeyError, ValueError, ModelError) as exc:
            raise CatalogCorruptError(
                f"{store.path} lacks the catalog settings ({exc}); it was not created by "
                "Catalog.create. Delete it and index again."
            ) from exc
        self.dim = self.info.dim
        self.vectors = VectorFile(
            root / vector_file, self.dim, settings.get("vector_dtype", "float32"), writable=not readonly
        )
        self.generation, self.count, self.rows = store.state()
        self.vectors.check_rows(self.rows)
        self.graph = GraphCache(root, store, self.vectors, self.params)
        self.reduction: PCA | None = None
        self.reduction_file: str | None = settings.get("reduction.file") or None
        self.tier: Tier | None = None  # the compact tier of a reduced catalog (see `tier`)
        self.tier_rows = 0  # rows of the tier known good: the rest are read in full
        self.product_field: str | None = settings.get(products.SETTING) or None
        self.rw = ReadWriteLock()
        self._lock_fd: int | None = None
        self._liveness: Liveness | None = None
        self.columns = MetadataColumns(store)

    # -- the graph and its space -----------------------------------------------------------------

    @property
    def graph_dim(self) -> int:
        return self.reduction.dim if self.reduction is not None else self.dim

    def to_graph(self, vectors: np.ndarray, projected: np.ndarray | None = None) -> np.ndarray:
        """What the graph indexes: the vectors themselves, or their PCA projection (``projected``,
        when the caller has it already)."""
        return vectors if self.reduction is None else self.reduction.transform(vectors, projected)

    def load_reduction(self) -> None:
        """The recorded PCA; a missing or damaged file names itself and both ways out."""
        self.reduction = None
        self._drop_tier()
        if self.reduction_file is None:
            return
        try:
            self.reduction = PCA.load(self.root / self.reduction_file)
        except CatalogCorruptError as exc:
            raise CatalogCorruptError(
                f"{exc.args[0].split(';')[0]}; the stored vectors are intact: refit it with "
                f"`fashionrec rebuild --catalog {self.root}`, or go back to the full-vector graph with "
                f"`fashionrec reduce --catalog {self.root} --dim 0`."
            ) from exc
        self.open_tier(self.store.settings())

    # -- the compact tier ------------------------------------------------------------------------------

    def _drop_tier(self) -> None:
        if self.tier is not None:
            self.tier.close()
        self.tier, self.tier_rows = None, 0

    def open_tier(self, settings: dict[str, str]) -> None:
        """The recorded tier, when it was made from the current PCA and vector file."""
        name = settings.get("tier.file") or ""
        if self.reduction is None or self.reduction_file is None or not name:
            self._drop_tier()
            return
        if self.tier is None or self.tier.path.name != name:
            self._drop_tier()
            self.tier = Tier.open(
                self.root / name, self.reduction, self.reduction_file, self.vectors.path.name,
                writable=not self.readonly,
            )  # fmt: skip
        if self.tier is not None:
            recorded = int(settings.get("tier.rows", "0") or 0)
            self.tier_rows = min(recorded, self.rows, self.tier.rows.rows_on_disk)

    @property
    def tier_wanted(self) -> bool:
        """Whether the catalog has a tier: a reduced graph not too wide for one (`Tier.possible`)."""
        reduction = self.reduction
        return reduction is not None and self.reduction_file is not None and Tier.possible(reduction)

    @property
    def tier_lags(self) -> bool:
        """Whether a write has the tier to make or catch up first (`ensure_tier`)."""
        return self.tier_wanted and (self.tier is None or self.tier_rows < self.rows)

    @property
    def tier_untidy(self) -> bool:
        """Whether a writable open has work on the tier: make it, catch it up, remake a format 1
        tier in the wider space, or remove files a crash left beside it (`ensure_tier`)."""
        if self.tier_lags or (self.tier_wanted and self.tier is not None and self.tier.space is None):
            return True
        return any(self._stray_tiers(self.tier if self.tier_wanted else None))

    def ensure_tier(self, widen: bool = False) -> None:
        """Under the write lock: a reduced catalog's tier made (a catalog written before the
        tier existed, or whose tier file was lost) or caught up with rows written without it;
        ``widen`` (a writable open): a format 1 tier remade in the wider space of format 2. A
        remake that fails on a full disk keeps the format 1 tier (with a warning) and removes
        what it wrote; other files of tiers no longer used are removed."""
        if not self.tier_wanted:
            if self.store.get_setting("tier.file"):
                self.store.set_settings({"tier.file": "", "tier.rows": "0"})
            self._drop_tier()
            self._remove_tiers(keep=None)
            return
        self.open_tier(self.store.settings())
        if self.tier is not None and self.tier.space is None and widen:
            try:
                self._make_tier()
            except DiskFullError as exc:
                self.open_tier(self.store.settings())  # the format 1 tier, still recorded
                log.warning("%s; the compact tier stays of format 1 until the next writable open", exc)
        elif self.tier is None:
            self._make_tier()
        if self.tier is not None and self.tier_rows < self.rows:
            self._catch_up_tier()
        self._remove_tiers(keep=self.tier)

    def _make_tier(self) -> None:
        """A new tier of format 2 from the stored vectors, recorded; on failure its files are removed."""
        assert self.reduction is not None and self.reduction_file is not None  # `tier_wanted`
        name = tier_name(self.reduction_file)
        log.info("%s: building the compact tier %s from the stored vectors", self.root, name)
        live = self.liveness.labels()
        picks = np.random.default_rng(0).choice(live, min(TIER_SAMPLE, len(live)), replace=False)
        sample = self.vectors.read(np.sort(picks)) if len(picks) else np.zeros((0, self.dim), np.float32)
        made: Tier | None = None
        try:
            made = Tier.create(
                self.root / name, self.reduction, self.reduction_file, self.vectors.path.name, sample
            )
            made.fill(self.vectors, 0, self.rows)
            self.store.set_settings({"tier.file": made.path.name, "tier.rows": str(self.rows)})
        except BaseException as exc:
            if made is not None:
                made.close()
            for path in (self.root / name, self.root / space_name(name)):
                path.unlink(missing_ok=True)
            if isinstance(exc, OSError) and is_disk_full(exc):
                raise disk_full(self.root, exc) from exc
            raise
        self._drop_tier()
        self.tier, self.tier_rows = made, self.rows

    def _catch_up_tier(self) -> None:
        """Tier rows for the rows written without it (a version without the tier, or a read-only
        open's lag)."""
        assert self.tier is not None
        try:
            self.tier.fill(self.vectors, self.tier_rows, self.rows)
            self.store.set_settings({"tier.file": self.tier.path.name, "tier.rows": str(self.rows)})
        except OSError as exc:
            if is_disk_full(exc):
                raise disk_full(self.root, exc) from exc
            raise
        self.tier_rows = self.rows

    def _stray_tiers(self, keep: Tier | None) -> Iterator[Path]:
        """Files of tiers other than ``keep`` (its rows and its space)."""
        kept = set() if keep is None else {keep.path.name, keep.space}
        return (path for path in self.root.glob("tier-*") if path.name not in kept)

    def _remove_tiers(self, keep: Tier | None) -> None:
        for old in self._stray_tiers(keep):
            old.unlink(missing_ok=True)

    def start_graph(self, rebuild: bool) -> bool:
        """The saved graph brought up to date, or a fresh one when there is none, when it indexes
        another space, or when asked. Returns whether the graph differs from its saved file."""
        if not rebuild and self.graph.load(self.graph_dim):
            self.graph_catch_up()
        else:
            self.fresh_graph()
        return self.graph.dirty

    def graph_catch_up(self) -> None:
        if self.graph.generation == self.generation:
            return
        delta = self.store.delta_since(self.graph.generation)
        if delta is None:
            self.graph.reconcile(self.liveness.labels(), self.to_graph, self.generation)
        else:
            self.graph.apply(delta, self.to_graph, self.generation)

    def fresh_graph(self) -> None:
        self.graph.fresh(self.graph_dim, self.liveness.labels(), self.to_graph, self.generation)

    @property
    def liveness(self) -> Liveness:
        if self._liveness is None:
            self._liveness = Liveness(self.store)
        return self._liveness

    def live_mask(self) -> np.ndarray:
        mask = self.liveness.mask
        if len(mask) < self.rows:
            mask = np.concatenate([mask, np.zeros(self.rows - len(mask), bool)])
        return mask[: self.rows]

    # -- catching up with other writers --------------------------------------------------------------

    def sync(self) -> None:
        """Before reading: catch up, taking the write lock only when something changed."""
        if self.store.state()[0] == self.generation:
            return
        with self.rw.write():
            self.catch_up()

    @contextlib.contextmanager
    def consistent(self) -> Iterator[CatalogCore]:
        """One consistent state to read: other processes' writes taken in, then the read lock and
        a snapshot of the database at that generation (retried if a write lands in between)."""
        while True:
            self.sync()
            with self.rw.read(), self.store.snapshot():
                if self.store.state()[0] != self.generation:
                    continue  # a write landed between the catch-up and the snapshot
                yield self
                return

    def catch_up(self) -> None:
        """Under the write lock: take in what other processes committed since we last looked."""
        with self.store.snapshot():
            generation, count, rows = self.store.state()
            if generation == self.generation:
                return
            settings = self.store.settings()
            delta = self.store.delta_since(self.generation)
        if settings["vectors.file"] != self.vectors.path.name:
            self.vectors.close()
            self.vectors = VectorFile(
                self.root / settings["vectors.file"], self.dim, self.vectors.dtype, writable=not self.readonly
            )
            self.graph.vectors = self.vectors
        self.generation, self.count, self.rows = generation, count, rows
        if delta is None:
            self._liveness = None
            self.columns = MetadataColumns(self.store)
        else:
            if self._liveness is not None:
                self._liveness.apply(delta)
            self.columns.apply(delta)
        self.product_field = settings.get(products.SETTING) or None
        ef = int(settings["hnsw.ef"])
        if ef != self.params.ef:
            self.params = HnswParams(self.params.M, self.params.ef_construction, ef)
            self.graph.params = self.params
            if self.graph.index is not None:
                self.graph.index.set_ef(ef)
        reduction_file = settings.get("reduction.file") or None
        if reduction_file == self.reduction_file:
            self.open_tier(settings)  # how far the tier is good, or a rebuilt one
        if reduction_file != self.reduction_file:
            self.reduction_file = reduction_file
            self.load_reduction()
            self.start_graph(rebuild=False)  # saved by whoever changed the reduction
        elif self.graph.index is not None:
            if delta is None:
                self.graph.reconcile(self.liveness.labels(), self.to_graph, generation)
            else:
                self.graph.apply(delta, self.to_graph, generation)

    # -- writing -------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Exclusive across threads (write lock) and processes (flock on the catalog's .lock)."""
        if self.readonly:
            raise read_only_refusal(self.root, "this write")
        if self._lock_fd is None:
            self._lock_fd = locked_open(self.root / LOCK_NAME)
        with self.rw.write():
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            try:
                self.catch_up()
                yield
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def write(
        self, new: Sequence[NewItem], remove_keys: Sequence[str] = (), *, graph: bool = True
    ) -> tuple[list[int], list[int]]:
        """One transaction (vector rows synced first), then the graph and masks; returns the
        labels added and removed. ``graph=False`` leaves the new items out of the graph, which
        stays at the generation before (a graph about to be replaced: `graph_catch_up` adds them)."""
        for item in new:  # an empty key no search or `/items/KEY` can name; None would fail in SQLite
            if not isinstance(item.key, str) or not item.key:
                raise BadArgumentError(
                    f"every key must be a non-empty string, got {item.key!r}; nothing was written"
                )
        _check_text([n.key for n in new] + [n.path for n in new if n.path] + list(remove_keys))
        texts = [metadata_text(item.key, item.metadata) for item in new]  # before any byte is written
        vectors = (
            checked_vectors(np.stack([n.vector for n in new]), self.dim, [n.key for n in new])
            if new
            else None
        )
        projected = None  # the PCA projection of the new vectors, once computed
        with self.writing():
            if vectors is not None and self.reduction is not None and self.tier_lags:
                self.ensure_tier()
            with self.store.writing() as writer:
                removed = writer.remove([*remove_keys, *(item.key for item in new)])
                if vectors is not None:
                    self.vectors.write_rows(writer.next_label, vectors)
                    if self.tier is not None and self.tier_rows == writer.next_label:
                        stored = to_float32(vectors.astype(self.vectors.dtype))  # as the file holds them
                        in_tier = self.tier.pca.project(stored)
                        self.tier.write_rows(writer.next_label, stored, in_tier)
                        if self.vectors.dtype == np.float32:  # the graph's projection is its start
                            projected = np.ascontiguousarray(in_tier[:, : self.graph_dim])
                        writer.note({"tier.rows": str(writer.next_label + len(vectors))})
                added = writer.insert(new, texts)
            if not (added or removed):
                return added, removed
            delta = Delta(np.asarray(added, np.int64), np.asarray(removed, np.int64), np.zeros(0, np.int64))
            if self.tier is not None and vectors is not None and self.tier_rows == added[0]:
                self.tier_rows = added[-1] + 1
            self.generation, self.count, self.rows = self.store.state()
            if self._liveness is not None:
                self._liveness.apply(delta)
            self.columns.apply(delta)
            if self.graph.index is not None and graph:
                if len(delta.removed):
                    self.graph.index.delete(delta.removed.tolist())
                if vectors is not None:
                    self.graph.index.add(delta.added, self.to_graph(vectors, projected))
                self.graph.generation = self.generation
                self.graph.dirty = True
        return added, removed

    def rewrite(self, change) -> int:  # change: Callable[[], int]
        """Paths or metadata changed in place (no vector touched); masks follow the change log."""
        with self.writing():
            count = change()
            if count:
                self.catch_up()
        return count

    def set_settings(self, values: dict[str, str]) -> None:
        """Settings other open catalogs must take in; this one takes them in now."""
        with self.writing():
            self.store.set_settings(values, bump=True)
            self.catch_up()

    def save(self) -> None:
        """Write the graph if it changed (atomically, under a new name), then record it."""
        if self.readonly:
            return
        with self.writing():
            if not self.graph.dirty and self.graph.file() is not None:
                return
            self.graph.save(self.generation)
            since = int(self.store.get_setting("changes.since", "0") or 0)
            if self.generation - since > 1 and self.store.changes_logged() > PRUNE_CHANGES_ABOVE:
                self.store.prune_changes(self.generation)

    def close(self) -> None:
        try:
            if not self.readonly and self.graph.dirty and self.graph.index is not None:
                self.save()
        finally:
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None
            self.vectors.close()
            self._drop_tier()
            self.store.close()
