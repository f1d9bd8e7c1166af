"""The vector file: every stored embedding as one row of a memory-mapped matrix.

Layout: a 4096-byte header (magic, then JSON with format, dtype and dimension, space-padded),
then row ``label`` at ``4096 + label * row_bytes``, float32 or float16, native little-endian.
``numpy.memmap(path, dtype, offset=4096).reshape(-1, dim)`` reads it as is.

Rows are only appended: a write puts new rows past the committed end, syncs them, and only then
does the database commit the items that name them. A crash in between leaves rows no item names,
overwritten by the next write. Rows of removed items stay until `compact` writes a new file.
Scans read it in blocks and hand the pages back to the kernel after each block, so exact search
over a million rows does not leave gigabytes resident in the process.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..errors import CatalogCorruptError, RottenVectorError
from .kernels import to_float32
from .store import disk_full, is_disk_full

MAGIC = b"FRVECTS\n"
HEADER_BYTES = 4096
FORMAT = 1
MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)  # Linux 5.14; not named by Python 3.11
WILLNEED = getattr(os, "POSIX_FADV_WILLNEED", None)  # not on macOS or Windows: plain reads there
RANDOM = getattr(os, "POSIX_FADV_RANDOM", None)
BLOCK_BYTES = 4 << 20  # rows scanned at a time: big enough for BLAS; a float16 block converted stays in cache


def file_name(dtype: np.dtype | str, serial: int = 0) -> str:
    return f"vectors-{serial}.{np.dtype(dtype).name}"


class VectorFile:
    """Append-only rows of one dtype and dimension; readable by many threads at once."""

    def __init__(
        self, path: Path, dim: int, dtype: np.dtype | str, *, writable: bool, recovery: str | None = None
    ) -> None:
        self.path = path
        self.header: dict[str, object] = {}  # the header's fields (other files of rows add their own)
        self.dim = dim
        self.dtype = np.dtype(dtype)
        self.row_bytes = dim * self.dtype.itemsize
        self._writable = writable
        self._lock = threading.Lock()
        self._map: mmap.mmap | None = None
        self._mapped_rows = 0
        self._fd: int | None = None
        self._recovery = recovery or (
            f"the vector file {path} is damaged; the catalog's vectors cannot be read without it: "
            "restore it from a backup, or delete the catalog directory and index again."
        )
        self._check_header()

    # -- creating and checking --------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        path: Path,
        dim: int,
        dtype: np.dtype | str,
        extra: dict[str, object] | None = None,
        recovery: str | None = None,
    ) -> VectorFile:
        """A new, empty file written under a temporary name and renamed into place. ``extra``
        header fields describe what another file of rows (the compact tier) holds."""
        fields = {"format": FORMAT, "dtype": np.dtype(dtype).name, "dim": dim, **(extra or {})}
        header = MAGIC + json.dumps(fields).encode()
        if len(header) > HEADER_BYTES:
            raise ValueError(f"a header of {len(header)} bytes does not fit in {HEADER_BYTES}")
        temporary = path.with_name(path.name + ".tmp")
        try:
            with temporary.open("wb") as handle:
                handle.write(header.ljust(HEADER_BYTES, b" "))
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, path)
        except OSError as exc:
            temporary.unlink(missing_ok=True)
            if is_disk_full(exc):
                raise disk_full(path, exc) from exc
            raise
        return cls(path, dim, dtype, writable=True, recovery=recovery)

    def _check_header(self) -> None:
        fields = read_header(self.path, self._recovery)
        own = {name: fields.get(name) for name in ("format", "dtype", "dim")}
        if own != {"format": FORMAT, "dtype": self.dtype.name, "dim": self.dim}:
            raise CatalogCorruptError(f"{self._recovery} (header {own} does not match the catalog)")
        self.header = fields

    @property
    def rows_on_disk(self) -> int:
        """Whole rows in the file, committed or not."""
        return max(0, (self.path.stat().st_size - HEADER_BYTES) // self.row_bytes)

    def check_rows(self, committed: int) -> None:
        """The file must hold every row the database says was committed."""
        if self.rows_on_disk < committed:
            raise CatalogCorruptError(
                f"{self._recovery} (it holds {self.rows_on_disk} rows, the catalog committed {committed})"
            )

    # -- writing -----------------------------------------------------------------------------------

    def write_rows(self, start: int, vectors: np.ndarray) -> None:
        """Write rows ``start..`` and sync them to disk; on failure the file is cut back."""
        data = np.ascontiguousarray(vectors, dtype=self.dtype)
        if data.ndim != 2 or data.shape[1] != self.dim:
            raise ValueError(f"expected rows of {self.dim} values, got shape {data.shape}")
        offset = HEADER_BYTES + start * self.row_bytes
        fd = os.open(self.path, os.O_RDWR)
        try:
            view = data.data.cast("B")
            written = 0
            while written < len(view):
                written += os.pwrite(fd, view[written:], offset + written)
            os.fdatasync(fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, offset)  # no half-written rows beyond the committed ones
            if is_disk_full(exc):
                raise disk_full(self.path, exc) from exc
            raise
        finally:
            os.close(fd)

    # -- reading ------------------------------------------------------------------------------------

    def _mapping(self, rows: int) -> tuple[mmap.mmap, int]:
        """A read-only map covering at least ``rows`` rows (remapped as the file grows)."""
        with self._lock:
            if self._map is None or self._mapped_rows < rows:
                on_disk = self.rows_on_disk
                if on_disk < rows:
                    raise CatalogCorruptError(f"{self._recovery} (row {rows - 1} is past its end)")
                with self.path.open("rb") as handle:
                    self._map = mmap.mmap(
                        handle.fileno(), HEADER_BYTES + on_disk * self.row_bytes, access=mmap.ACCESS_READ
                    )
                self._mapped_rows = on_disk
            return self._map, self._mapped_rows

    def _matrix(self, rows: int) -> tuple[mmap.mmap, np.ndarray]:
        mapping, mapped = self._mapping(rows)
        matrix = np.frombuffer(mapping, self.dtype, mapped * self.dim, HEADER_BYTES).reshape(mapped, self.dim)
        return mapping, matrix

    def read(self, labels: np.ndarray | list[int], *, raw: bool = False) -> np.ndarray:
        """Rows of some labels as float32, or as stored when ``raw`` (a handful at a time:
        re-ranking, "more like this", the candidates a bounded scan could not rule out).

        Read with pread, not through the map: a page fault on a map also maps the pages around
        it, so a few hundred searches would leave most of the file resident in the process.
        Rows not in the page cache are asked of the disk together first (``WILLNEED``), and none
        of their neighbours with them (``RANDOM``): at a million items most re-rank reads miss
        the cache, and 140 such reads took 11.9 ms one after another, 2.6 ms asked together
        (2 GB file evicted, this machine's disk)."""
        labels = np.asarray(labels, np.int64)
        rows = np.empty((len(labels), self.dim), self.dtype)
        fd = self._reader_fd()
        if len(labels) > 1 and WILLNEED is not None:  # rows not in the page cache: fetched together
            with contextlib.suppress(OSError):  # a kernel that refuses the hint reads them one by one
                for label in labels.tolist():
                    os.posix_fadvise(fd, HEADER_BYTES + label * self.row_bytes, self.row_bytes, WILLNEED)
        into = rows.view(np.uint8).reshape(-1).data  # bytes of the rows (none too), sliced per row
        size = self.row_bytes
        for start, label in zip(range(0, len(labels) * size, size), labels.tolist()):
            if os.preadv(fd, [into[start : start + size]], HEADER_BYTES + label * size) != size:
                raise CatalogCorruptError(f"{self._recovery} (row {label} is past its end)")
        return rows if raw else to_float32(rows)

    def _reader_fd(self) -> int:
        with self._lock:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_RDONLY)
                if RANDOM is not None:  # no readahead on this descriptor: scans map the file instead
                    with contextlib.suppress(OSError):
                        os.posix_fadvise(self._fd, 0, 0, RANDOM)
            return self._fd

    def blocks(
        self, rows: int, block_rows: int | None = None, *, raw: bool = False
    ) -> Iterator[tuple[int, np.ndarray]]:
        """``(first row, float32 block)`` over rows ``0..rows``; pages are released per block.
        ``raw`` blocks keep the stored dtype (for kernels that convert as they go)."""
        if rows == 0:
            return
        block_rows = block_rows or max(1, BLOCK_BYTES // self.row_bytes)
        mapping, matrix = self._matrix(rows)
        for start in range(0, rows, block_rows):
            stop = min(rows, start + block_rows)
            block = matrix[start:stop]
            self._populate(mapping, start, stop)
            yield start, block if raw else to_float32(block)
            self._release(mapping, start, stop)

    def gather_blocks(
        self, labels: np.ndarray, block_rows: int = 4096, *, raw: bool = False
    ) -> Iterator[tuple[int, np.ndarray]]:
        """``(offset into labels, float32 rows)`` for sorted ``labels``, a block at a time;
        the pages are handed back after each block."""
        if len(labels) == 0:
            return
        mapping, matrix = self._matrix(int(labels[-1]) + 1)
        for start in range(0, len(labels), block_rows):
            chunk = labels[start : start + block_rows]
            yield start, matrix[chunk] if raw else to_float32(matrix[chunk])
            self._release(mapping, int(chunk[0]), int(chunk[-1]) + 1)

    def prefetch(self) -> None:
        """Ask the kernel to read the whole file into the page cache in the background (returns at
        once): for the compact tier, whose rows every search reads, so the first searches after
        an open do not wait on a disk read per scattered row."""
        if WILLNEED is None:
            return
        with contextlib.suppress(OSError):
            fd = os.open(self.path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, WILLNEED)
            finally:
                os.close(fd)

    def take(self, labels: np.ndarray) -> np.ndarray:
        """Rows of any labels as stored, through the map, whose pages stay mapped: for a file small
        enough to keep resident (the compact tier), where a filter's thousands of scattered rows
        would otherwise cost a page fault each, every search."""
        labels = np.asarray(labels, np.int64)
        if len(labels) == 0:
            return np.empty((0, self.dim), self.dtype)
        _, matrix = self._matrix(int(labels.max()) + 1)
        return matrix[labels]

    def _populate(self, mapping: mmap.mmap, start: int, stop: int) -> None:
        """Map the pages of rows start..stop in one call: a scan that faults them in one by one
        spends a fifth of its time in the kernel's fault handler (measured on a 1.6 GB file)."""
        first = (HEADER_BYTES + start * self.row_bytes) // mmap.PAGESIZE * mmap.PAGESIZE
        last = min(HEADER_BYTES + stop * self.row_bytes, len(mapping))
        with contextlib.suppress(OSError, ValueError, AttributeError):  # before Linux 5.14: faults
            mapping.madvise(MADV_POPULATE_READ, first, last - first)

    def _release(self, mapping: mmap.mmap, start: int, stop: int) -> None:
        """Drop the pages of rows start..stop from this process (the page cache keeps them)."""
        first = (HEADER_BYTES + start * self.row_bytes) // mmap.PAGESIZE * mmap.PAGESIZE
        last = min(HEADER_BYTES + stop * self.row_bytes, len(mapping))
        with contextlib.suppress(OSError, ValueError, AttributeError):  # not Linux: pages stay
            mapping.madvise(mmap.MADV_DONTNEED, first, last - first)

    def close(self) -> None:
        with self._lock:
            self._map = None  # numpy views may still hold it; the mapping goes with the last one
            self._mapped_rows = 0
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def read_header(path: Path, recovery: str) -> dict[str, object]:
    """The JSON fields of a file of rows; `CatalogCorruptError` (ending in ``recovery``) when
    it is missing or has no readable header."""
    try:
        with path.open("rb") as handle:
            header = handle.read(HEADER_BYTES)
    except FileNotFoundError:
        raise CatalogCorruptError(f"the vector file {path} is missing; {recovery}") from None
    if len(header) < HEADER_BYTES or not header.startswith(MAGIC):
        raise CatalogCorruptError(f"{recovery} (no vector file header)")
    try:
        fields = json.loads(header[len(MAGIC) :].decode().strip())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CatalogCorruptError(f"{recovery} ({exc})") from exc
    if not isinstance(fields, dict):
        raise CatalogCorruptError(f"{recovery} (header {fields!r} is not a record)")
    return fields


def sound_rows(rows: np.ndarray, tolerance: float = 1e-3) -> np.ndarray:
    """Which stored rows are finite unit vectors, as the write gate let them in: any other row
    (NaN, zeros, huge values) is damage to the file and is served or indexed nowhere."""
    rows = np.asarray(rows, np.float32)
    with np.errstate(all="ignore"):  # a huge value overflows to inf: not unit, as wanted
        finite = np.isfinite(rows).all(axis=1)
        norms = np.linalg.norm(np.where(finite[:, None], rows, 0), axis=1)
        return finite & (np.abs(norms - 1.0) <= tolerance)


def read_sound(vectors: VectorFile, labels: list[int], keys: list[str]) -> np.ndarray:
    """The stored vectors of ``keys`` (at ``labels``) for a caller outside the catalog: a damaged
    row is never handed out as NaN or zeros, but refused with `RottenVectorError` naming its key
    and the repair."""
    rows = vectors.read(labels)
    sound = sound_rows(rows)
    if not sound.all():
        rotten = [key for key, ok in zip(keys, sound.tolist()) if not ok]
        key = rotten[0]
        first = repr(key) if len(key) <= 80 else f"{key[:60]!r}… ({len(key)} characters)"
        others = f" and {len(rotten) - 1} more" if len(rotten) > 1 else ""
        raise RottenVectorError(
            f"the stored vector of {first}{others} in {vectors.path} is damaged (not a finite unit "
            "vector), so it is not given out: remove the item and index its image again "
            f"(`fashionrec verify --catalog {vectors.path.parent}` counts such items).",
            rotten,
        )
    return rows
