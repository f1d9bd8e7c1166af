"""The HNSW graph as a cache of the stored vectors: saved, checked, loaded and brought up to date.

The graph file is written under a new name, checked for a short write (hnswlib's writer does not
report a full disk: the file's length must be what its own header implies), synced, renamed into
place and only then recorded in the database with its size, checksum and the generation it
covers. Opening checks the size and a sampled checksum (a full checksum of a million-item graph
would cost more than loading it; `verify` reads it all), then applies what changed since.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import CatalogCorruptError
from .hnsw import HnswIndex, HnswParams
from .hnsw_file import expected_size
from .store import Delta, Store, disk_full, is_disk_full
from .vectors import VectorFile, sound_rows

log = logging.getLogger(__name__)

PREFIX = "graph-"
SUFFIX = ".hnsw"
_SAMPLES = 64
_SAMPLE_BYTES = 64 * 1024
ADD_BLOCK = 20_000  # vectors added to the graph at a time when filling it


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sampled_digest(path: Path) -> str:
    """A checksum of the start, the end and 64 slices in between: catches a garbled or swapped
    file in milliseconds; the full sha256 is for `verify`."""
    size = path.stat().st_size
    digest = hashlib.blake2b(str(size).encode(), digest_size=16)
    with path.open("rb") as handle:
        for offset in np.linspace(0, max(0, size - _SAMPLE_BYTES), _SAMPLES).astype(np.int64):
            handle.seek(int(offset))
            digest.update(handle.read(_SAMPLE_BYTES))
    return digest.hexdigest()


class GraphCache:
    """The catalog's graph and its file. Callers hold the catalog's locks."""

    def __init__(self, root: Path, store: Store, vectors: VectorFile, params: HnswParams) -> None:
        self.root = root
        self.store = store
        self.vectors = vectors
        self.params = params
        self.index: HnswIndex | None = None
        self.dim = 0
        self.generation = -1  # the store generation the graph in memory reflects
        self.dirty = False
        self.left_out: list[int] = []  # labels whose stored vector is not a finite unit vector (damage)

    @property
    def recovery(self) -> str:
        return f"recreate it from the stored vectors with `fashionrec rebuild --catalog {self.root}`"

    def file(self) -> Path | None:
        name = self.store.get_setting("graph.file")
        return self.root / name if name else None

    # -- loading -------------------------------------------------------------------------------

    def load(self, dim: int) -> bool:
        """Load the saved graph when it indexes ``dim``-d vectors; False when there is none."""
        self.dim = dim
        path = self.file()
        if path is None or self.store.get_setting("graph.dim") not in (None, str(dim)):
            return False
        for _ in range(5):  # another process may save a newer graph while we read this one
            try:
                self._check_file(path)
                self.index = self._read(path)
                self.generation = int(self.store.get_setting("graph.generation", "-1") or -1)
                return True
            except CatalogCorruptError:
                newer = self.file()
                if newer is None or newer == path:
                    raise
                path = newer
        raise CatalogCorruptError(
            f"the HNSW graph of {self.root} keeps changing while it is read; try again."
        )

    def _check_file(self, path: Path) -> None:
        if not path.is_file():
            raise CatalogCorruptError(f"the HNSW graph file {path} is missing; {self.recovery}.")
        size = int(self.store.get_setting("graph.size", "-1") or -1)
        recorded = self.store.get_setting("graph.sample")
        if path.stat().st_size != size:
            raise CatalogCorruptError(
                f"the HNSW graph file {path} is truncated or corrupt (its size differs from what was "
                f"saved); {self.recovery}."
            )
        actual = sampled_digest(path) if recorded else sha256(path)  # 0.1.0 recorded only sha256
        if actual != (recorded or self.store.get_setting("graph.sha256")):
            raise CatalogCorruptError(
                f"the HNSW graph file {path} is corrupt (its checksum differs from what was saved); "
                f"{self.recovery}."
            )

    def _read(self, path: Path) -> HnswIndex:
        try:
            return HnswIndex.load(path, self.dim, self.params)
        # FileNotFoundError: replaced since it was checked; load() then looks for the newer one
        except (RuntimeError, ValueError, MemoryError, FileNotFoundError) as exc:
            raise CatalogCorruptError(f"cannot load the HNSW graph {path} ({exc}); {self.recovery}.") from exc

    def full_checksum_problem(self) -> str | None:
        path = self.file()
        if path is None or not path.is_file():
            return None if path is None else f"the graph file {path} is missing"
        recorded = self.store.get_setting("graph.sha256")
        if recorded and sha256(path) != recorded:
            return f"the graph file {path} does not match its recorded sha256"
        return None

    # -- filling and catching up ------------------------------------------------------------------

    def fresh(
        self, dim: int, live: np.ndarray, transform: Callable[[np.ndarray], np.ndarray], generation: int
    ) -> None:
        """A new graph holding the ``live`` labels, filled from the vector file."""
        self.dim = dim
        self.index = HnswIndex(dim, self.params, capacity=len(live))
        self.left_out = []
        self._add(live, transform)
        self.generation = generation
        self.dirty = True

    def _add(self, labels: np.ndarray, transform: Callable[[np.ndarray], np.ndarray]) -> None:
        assert self.index is not None
        if len(labels) > ADD_BLOCK:
            log.info("adding %d stored vectors to the HNSW graph of %s", len(labels), self.root)
        labels = np.sort(labels)
        for start, rows in self.vectors.gather_blocks(labels, ADD_BLOCK):
            block = labels[start : start + len(rows)]
            finite = sound_rows(rows)
            if not finite.all():  # bit rot in the vector file: never put NaN or zeros into the graph
                self.left_out += block[~finite].tolist()
                log.warning(
                    "%s: left %d item(s) whose stored vector is not a finite unit vector out of the graph; "
                    "`fashionrec verify` counts them, re-index them to repair",
                    self.vectors.path, int((~finite).sum()),
                )  # fmt: skip
                block, rows = block[finite], rows[finite]
            if len(block):
                self.index.add(block, transform(rows))

    def apply(self, delta: Delta, transform: Callable[[np.ndarray], np.ndarray], generation: int) -> None:
        """Take in what changed: removed labels hidden, added ones inserted."""
        assert self.index is not None
        if len(delta.removed):
            self.index.delete(delta.removed.tolist())
        if len(delta.added):
            self._add(delta.added, transform)
        self.generation = generation
        self.dirty = self.dirty or bool(len(delta.added) or len(delta.removed))

    def reconcile(
        self, live: np.ndarray, transform: Callable[[np.ndarray], np.ndarray], generation: int
    ) -> None:
        """Make the graph hold exactly ``live`` (when the change log does not reach back)."""
        assert self.index is not None
        in_graph = self.index.labels()
        live_set = set(live.tolist())
        stale = in_graph - live_set
        missing = np.asarray(sorted(live_set - in_graph), np.int64)
        self.apply(
            Delta(missing, np.asarray(sorted(stale), np.int64), np.zeros(0, np.int64)), transform, generation
        )

    # -- saving --------------------------------------------------------------------------------

    def save(self, generation: int) -> Path:
        """Write under a new name, check the length, sync, rename, then record it."""
        assert self.index is not None
        # A name no reader can have open: a rebuild at the same generation never replaces the
        # live file under readers' feet.
        target = self.root / f"{PREFIX}{generation}-{os.urandom(4).hex()}{SUFFIX}"
        temporary = target.with_name(target.name + ".tmp")
        try:
            self.index.save(temporary)
            if temporary.stat().st_size != expected_size(temporary):
                raise OSError(28, "No space left on device (the graph file was written short)")
            with temporary.open("rb+") as handle:
                os.fsync(handle.fileno())
            os.replace(temporary, target)
        except OSError as exc:
            temporary.unlink(missing_ok=True)
            if is_disk_full(exc):
                raise disk_full(self.root, exc) from exc
            raise
        self.store.set_settings(
            {
                "graph.file": target.name,
                "graph.size": str(target.stat().st_size),
                "graph.sha256": sha256(target),
                "graph.sample": sampled_digest(target),
                "graph.generation": str(generation),
                "graph.dim": str(self.dim),
            }
        )
        self.dirty = False
        for old in self.root.glob(f"{PREFIX}*"):
            if old.name != target.name:
                old.unlink(missing_ok=True)
        return target
