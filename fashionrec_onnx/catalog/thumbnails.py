"""Small grey thumbnails of the catalog's images: the second near-duplicate signal beside the
embeddings (see `duplicates`).

Random or ImageNet embeddings find a photo's look-alikes as readily as its copies, and a copy at
half size no longer sits among its original's nearest neighbours. Pixels settle it. A thumbnail
(grey, at most ``SIDE`` pixels a side, never enlarged) is kept per item, and each gives a
*canonical* descriptor: the object centred and scaled by its intensity moments (one scale for
both axes, so a trouser 5 pixels wide in a half-size copy is not stretched), blurred, so that
rescaling, recompression and cutting a few percent off a side move it little. The descriptors
find candidate pairs (nearest neighbours), and `compare` decides: it lines the two thumbnails
up (whole frames, or the cut of 0-5% a side, either image inside the other, that best matches
their row and column profiles), brings both to the coarser one's pixels (an antialiased resize,
as the copy was made), and calls them the same photo when they correlate at least ``SHARP`` as
they are, or ``BLURRED`` after a slight blur (recompression noise). Look-alike products of one
template (plain trousers, plain T-shirts) differ in details a resized copy keeps.

The thumbnails live in a side file, ``thumbnails.sqlite``, owned by this module: a cache filled
when images are indexed (`made` on the pixels decoded for the model, `keep_indexed`), each row for
the file its item was indexed from (path, size and time as the catalog records them, so
`duplicates` opens no file), and for items indexed before (or without a recorded size and time)
from their image paths when `duplicates` runs, so catalogs written before it need no migration.
Items without a readable image file (vectors added with `add_many` and no path) fall back to the
embedding threshold alone. The rule for many pairs at once is `pixel_pairs.same_photos`.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import ImageLoadError
from ..images import load_image
from ..model import default_threads
from .core import CatalogCore
from .store import Item

log = logging.getLogger(__name__)

FILE_NAME = "thumbnails.sqlite"
SIDE = 64  # largest thumbnail side (pixels): 4 KB a square item
CANONICAL_SIDE = 16  # canonical descriptor: CANONICAL_SIDE x CANONICAL_SIDE samples
SHARP = 0.998  # correlation of two lined-up thumbnails from which they are one photo ...
BLURRED = 0.999  # ... or after a blur of _COMPARE_BLUR of their side (recompression noise)
GATE = 0.99  # canonical correlation below which two thumbnails of one scale are not compared
GATE_RESCALED = 0.97  # the same for thumbnails whose sizes differ by RESCALED or more
RESCALED = 1.5
_CUTS = np.arange(0.0, 0.0501, 0.0025)  # fractions cut off each side, tried when lining up
_COMPARE_BLUR = 0.043  # of the compared side (1.2 pixels of a 28 px image)
_WINDOW = 2.0  # the canonical window spans the centroid +- _WINDOW standard deviations
_SUPERSAMPLE = 4
_BLUR = 0.75  # canonical samples (Gaussian sigma): a half-size copy keeps this much detail
_READ_BATCH = 2048  # images read (and stored) at a time
_BACKGROUND_TOLERANCE = 8.0  # grey levels around the border colour that do not count as object

_SCHEMA = """
CREATE TABLE IF NOT EXISTS thumbnails (
    label INTEGER PRIMARY KEY,
    path TEXT NOT NULL,
    size INTEGER,
    mtime_ns INTEGER,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    pixels BLOB NOT NULL,
    descriptor BLOB NOT NULL
)
"""


def thumbnail(image: Image.Image) -> np.ndarray:
    """Grey uint8 ``(height, width)``, at most `SIDE` a side, never enlarged."""
    grey = image.convert("L")
    scale = SIDE / max(grey.size)
    if scale < 1.0:
        size = (max(1, round(grey.width * scale)), max(1, round(grey.height * scale)))
        grey = grey.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)
    return np.asarray(grey, np.uint8)


def canonical(thumb: np.ndarray) -> np.ndarray:
    """The thumbnail's object centred and scaled by its intensity moments, blurred, mean 0 and
    unit length: small crops, rescaling and recompression move it little."""
    a = np.asarray(thumb, np.float32)
    ring = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    background = float(np.median(ring))
    weight = np.maximum(np.abs(a - background) - _BACKGROUND_TOLERANCE, 0.0)
    if weight.sum() <= 0:
        weight = np.ones_like(a)
    total = float(weight.sum())
    rows, cols = weight.sum(axis=1), weight.sum(axis=0)
    ys, xs = np.arange(a.shape[0]) + 0.5, np.arange(a.shape[1]) + 0.5
    cy, cx = float(rows @ ys) / total, float(cols @ xs) / total
    sy = max(float(np.sqrt(rows @ (ys - cy) ** 2 / total)), 0.5)
    sx = max(float(np.sqrt(cols @ (xs - cx) ** 2 / total)), 0.5)
    sx = sy = max(sx, sy)  # one scale: a thin object is not stretched past its few pixels
    side = CANONICAL_SIDE * _SUPERSAMPLE
    width, height = 2 * _WINDOW * sx, 2 * _WINDOW * sy
    affine = (width / side, 0.0, cx - _WINDOW * sx, 0.0, height / side, cy - _WINDOW * sy)
    grid = Image.fromarray(a - background, "F").transform(
        (side, side), Image.Transform.AFFINE, affine, Image.Resampling.BICUBIC, fillcolor=0.0
    )
    from scipy.ndimage import gaussian_filter

    blurred = gaussian_filter(np.asarray(grid, np.float32), _BLUR * _SUPERSAMPLE, mode="constant")
    small = blurred.reshape(CANONICAL_SIDE, _SUPERSAMPLE, CANONICAL_SIDE, _SUPERSAMPLE).mean(axis=(1, 3))
    return _standardised(small.reshape(-1))


def _standardised(values: np.ndarray) -> np.ndarray:
    centred = values.astype(np.float32) - float(values.mean())
    norm = float(np.linalg.norm(centred))
    return centred / norm if norm > 1e-6 else np.zeros_like(centred)


def worth_comparing(canonical_similarity: np.ndarray, sizes_a: np.ndarray, sizes_b: np.ndarray) -> np.ndarray:
    """Which candidate pairs `compare` should look at: canonical descriptors of a small image
    blur more, so pairs of very different sizes get a looser gate. Sizes are pixel counts."""
    ratio = np.sqrt(np.maximum(sizes_a, sizes_b) / np.maximum(np.minimum(sizes_a, sizes_b), 1))
    gate = np.where(ratio >= RESCALED, GATE_RESCALED, GATE)
    result: np.ndarray = canonical_similarity >= gate
    return result


def compare(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(sharp, blurred): the best correlation of the two thumbnails lined up, as they are and
    after a slight blur. Tried: either one inside the other at the cut its profiles suggest
    (`_lined_up`), and the whole frames (a resized copy: no cut at all)."""
    from scipy.ndimage import gaussian_filter

    sharp = blurred = -1.0
    whole = (0.0, 0.0, 0.0, 0.0)  # the same either way round
    for outer, inner, cuts in ((a, b, None), (b, a, None), (a, b, whole)):
        x, y = _lined_up(outer, inner, cuts)
        sigma = _COMPARE_BLUR * min(x.shape)
        sharp = max(sharp, float(_standardised(x.reshape(-1)) @ _standardised(y.reshape(-1))))
        blurred = max(
            blurred,
            float(
                _standardised(gaussian_filter(x, sigma).reshape(-1))
                @ _standardised(gaussian_filter(y, sigma).reshape(-1))
            ),
        )
    return sharp, blurred


def same_photo(a: np.ndarray, b: np.ndarray) -> bool:
    """The rule: see the module doc."""
    sharp, blurred = compare(a, b)
    return sharp >= SHARP or blurred >= BLURRED


def _lined_up(
    outer: np.ndarray, inner: np.ndarray, cuts: tuple[float, float, float, float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``inner`` taken as ``outer`` with ``cuts`` (left, top, right, bottom fractions) cut off,
    by default the cut whose row and column profiles match best; then both at the coarser one's
    pixels (antialiased, the way a downscaled copy is made)."""
    fo, fi = outer.astype(np.float32), inner.astype(np.float32)
    if cuts is None:
        left, right = _cut(fo.mean(axis=0), fi.mean(axis=0))
        top, bottom = _cut(fo.mean(axis=1), fi.mean(axis=1))
    else:
        left, top, right, bottom = cuts
    (ho, wo), (hi, wi) = outer.shape, inner.shape
    box = (left * wo, top * ho, (1 - right) * wo, (1 - bottom) * ho)
    width = max(2, min(wi, round((1 - left - right) * wo)))
    height = max(2, min(hi, round((1 - top - bottom) * ho)))
    x = Image.fromarray(fo, "F").resize((width, height), Image.Resampling.BICUBIC, box=box)
    y = Image.fromarray(fi, "F")
    if y.size != (width, height):
        y = y.resize((width, height), Image.Resampling.BICUBIC)
    return np.asarray(x, np.float32), np.asarray(y, np.float32)


def _cut(outer: np.ndarray, inner: np.ndarray) -> tuple[float, float]:
    """The fractions (low, high) cut off ``outer``'s profile that best match ``inner``'s."""
    n, m = len(outer), len(inner)
    centres = (np.arange(n) + 0.5) / n
    along = (np.arange(m) + 0.5) / m
    low, high = _CUTS[:, None, None], _CUTS[None, :, None]
    positions = low + along[None, None, :] * (1.0 - low - high)
    sampled = np.interp(positions.reshape(-1), centres, outer).reshape(len(_CUTS), len(_CUTS), m)
    sampled = sampled - sampled.mean(axis=-1, keepdims=True)
    sampled /= np.maximum(np.linalg.norm(sampled, axis=-1, keepdims=True), 1e-6)
    score = sampled @ _standardised(inner)
    i, j = np.unravel_index(int(np.argmax(score)), score.shape)
    return float(_CUTS[i]), float(_CUTS[j])


@dataclass
class Signals:
    """What `duplicates` compares: the canonical descriptors of the items that have a thumbnail
    (held in memory), and their thumbnails, fetched for the pairs being compared (`pixels`)."""

    labels: np.ndarray  # items with a thumbnail
    descriptors: np.ndarray  # (len(labels), CANONICAL_SIDE**2) float32, unit length
    sizes: np.ndarray  # each thumbnail's pixel count
    _db: sqlite3.Connection | None
    _held: dict[int, np.ndarray]  # thumbnails not in the side file (read-only, or it failed)

    def pixels(self, labels: Sequence[int]) -> dict[int, np.ndarray]:
        """The thumbnails of ``labels`` (all of them hold one)."""
        found = {label: self._held[label] for label in labels if label in self._held}
        wanted = [label for label in labels if label not in found]
        for start in range(0, len(wanted), 900):
            chunk = wanted[start : start + 900]
            assert self._db is not None
            rows = self._db.execute(
                "SELECT label, width, height, pixels FROM thumbnails "
                f"WHERE label IN ({','.join('?' * len(chunk))})",
                chunk,
            ).fetchall()
            for label, width, height, data in rows:
                found[label] = np.frombuffer(data, np.uint8).reshape(height, width)
        return found

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def __enter__(self) -> Signals:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Thumbnails:
    """The side file of one catalog: label -> thumbnail and descriptor, with the image file's
    path, size and time they were made from (a changed file is read again)."""

    def __init__(self, root: Path, *, readonly: bool) -> None:
        self.path = root / FILE_NAME
        self.readonly = readonly

    def _connect(self) -> sqlite3.Connection | None:
        """The side file, created when missing; a damaged one is a lost cache: made anew (or,
        read-only, left alone and the images read again)."""
        if self.readonly:
            if not self.path.exists():
                return None
            db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
            try:
                db.execute("SELECT count(*) FROM thumbnails LIMIT 1").fetchall()
            except sqlite3.DatabaseError as exc:
                db.close()
                log.warning("thumbnails in %s unusable (%s): reading the images again", self.path, exc)
                return None
            return db
        for attempt in range(2):
            db = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False)
            try:
                db.execute(_SCHEMA)
                db.execute("SELECT count(*) FROM thumbnails LIMIT 1").fetchall()
                return db
            except sqlite3.DatabaseError as exc:
                db.close()
                if attempt:
                    raise
                log.warning("thumbnails in %s unusable (%s): made anew", self.path, exc)
                for stale in (self.path, self.path.with_name(self.path.name + "-journal")):
                    stale.unlink(missing_ok=True)
        return None

    def signals(self, items: Sequence[Item]) -> Signals:
        """The descriptors of the items that have an image: the stored ones made from the file
        the item was indexed from (its path, size and time, as the catalog records them: no file
        is opened; an item without a recorded size and time is checked against its file), the
        others read now (in a thread pool) and stored unless read-only. Close the result (or use
        it in ``with``) when done comparing."""
        files: dict[int, tuple[str, int, int]] = {}
        for item in items:
            if item.path and item.size is not None and item.mtime_ns is not None:
                files[item.label] = (item.path, item.size, item.mtime_ns)
            elif item.path and (status := _status(item.path)) is not None:
                files[item.label] = (item.path, *status)
        db: sqlite3.Connection | None = None
        if files:
            try:
                db = self._connect()
            except (sqlite3.Error, OSError) as exc:  # a cache: without it the images are read again
                log.warning("thumbnails in %s unusable (%s): reading the images again", self.path, exc)
        stored: dict[int, tuple[np.ndarray, int]] = {}
        if db is not None:
            try:
                stored = self._stored(db, files)
            except sqlite3.DatabaseError as exc:
                log.warning("thumbnails in %s unreadable (%s): reading the images again", self.path, exc)
        for label in [label for label in files if label not in stored]:
            status = _status(files[label][0])
            if status is None:
                del files[label]  # the file is gone: no pixels to compare
            else:
                files[label] = (files[label][0], *status)
        held: dict[int, np.ndarray] = {}
        missing = [label for label in files if label not in stored]
        if missing and self.readonly:
            log.info(
                "%d images read for their thumbnails, not kept: the catalog is open read-only "
                "(indexing keeps them)",
                len(missing),
            )
        elif missing:
            log.debug("reading %d images for their thumbnails", len(missing))
        for start in range(0, len(missing), _READ_BATCH):
            fresh = self._read([(label, files[label][0]) for label in missing[start : start + _READ_BATCH]])
            for label, (thumb, descriptor) in fresh.items():
                stored[label] = (descriptor.astype("<f2").astype(np.float32), thumb.size)  # as stored
                held[label] = thumb
            if db is not None and not self.readonly and fresh:
                try:
                    with db:
                        db.executemany(
                            "INSERT OR REPLACE INTO thumbnails VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                            [
                                (label, *files[label], t.shape[1], t.shape[0], t.tobytes(), _packed(d))
                                for label, (t, d) in fresh.items()
                            ],
                        )
                    for label in fresh:
                        del held[label]  # kept in the file: fetched again when compared
                except sqlite3.Error as exc:  # a cache: failing to keep it costs time, not results
                    log.warning("could not store thumbnails in %s: %s", self.path, exc)
        labels = np.asarray(sorted(stored), np.int64)
        side = CANONICAL_SIDE * CANONICAL_SIDE
        descriptors = np.zeros((0, side), np.float32)
        if len(labels):
            descriptors = np.stack([stored[int(label)][0] for label in labels])
        sizes = np.asarray([stored[int(label)][1] for label in labels], np.int64)
        return Signals(labels, descriptors.astype(np.float32), sizes, db, held)

    @staticmethod
    def _read(paths: list[tuple[int, str]]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Thumbnail and descriptor of each readable image (decoding runs on every core)."""

        def one(path: str) -> tuple[np.ndarray, np.ndarray] | None:
            try:
                thumb = thumbnail(load_image(Path(path), draft_size=SIDE))
            except (ImageLoadError, OSError) as exc:
                log.debug("no thumbnail for %s: %s", path, exc)
                return None
            return thumb, canonical(thumb)

        with ThreadPoolExecutor(default_threads(), thread_name_prefix="fashionrec-thumbnails") as pool:
            results = list(pool.map(one, [path for _, path in paths]))
        return {label: result for (label, _), result in zip(paths, results) if result is not None}

    def keep(self, rows: Sequence[tuple[int, str, int | None, int | None, np.ndarray, np.ndarray]]) -> None:
        """Store ``(label, path, size, mtime_ns, thumbnail, descriptor)`` rows made while
        indexing. A cache: failing to keep them costs the first `duplicates` run time, so it is
        logged, never raised."""
        if not rows or self.readonly:
            return
        db = None
        try:
            db = self._connect()
            if db is not None:
                with db:
                    db.executemany(
                        "INSERT OR REPLACE INTO thumbnails VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        [
                            (label, path, size, mtime, t.shape[1], t.shape[0], t.tobytes(), _packed(d))
                            for label, path, size, mtime, t, d in rows
                        ],
                    )
        except (sqlite3.Error, OSError) as exc:
            log.warning("could not store thumbnails in %s: %s", self.path, exc)
        finally:
            if db is not None:
                db.close()

    @staticmethod
    def _stored(
        db: sqlite3.Connection, files: dict[int, tuple[str, int, int]]
    ) -> dict[int, tuple[np.ndarray, int]]:
        stored: dict[int, tuple[np.ndarray, int]] = {}
        labels = list(files)
        side = CANONICAL_SIDE * CANONICAL_SIDE
        for start in range(0, len(labels), 900):
            chunk = labels[start : start + 900]
            rows = db.execute(
                f"SELECT label, path, size, mtime_ns, width, height, descriptor FROM thumbnails "
                f"WHERE label IN ({','.join('?' * len(chunk))})",
                chunk,
            ).fetchall()
            for label, path, size, mtime_ns, width, height, descriptor in rows:
                if (path, size, mtime_ns) != files[label]:
                    continue  # another file now, or the same file changed
                values = np.frombuffer(descriptor, "<f2")
                if len(values) != side or not np.isfinite(values).all():
                    continue
                stored[label] = (values.astype(np.float32), width * height)
        return stored


def _status(path: str) -> tuple[int, int] | None:
    """The file's size and time, None when it cannot be reached."""
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_size, status.st_mtime_ns


def made(image: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """The thumbnail of a decoded image and its canonical descriptor (as `duplicates` reads
    them), made while the image is indexed."""
    thumb = thumbnail(image)
    return thumb, canonical(thumb)


def keep_indexed(core: CatalogCore, made: Mapping[str, tuple[np.ndarray, np.ndarray] | None]) -> None:
    """Thumbnails made while ``made``'s keys were indexed, kept for the items now holding those
    keys, under the path, size and time the catalog records for them."""
    wanted = [key for key, value in made.items() if value is not None]
    if not wanted or core.readonly:
        return
    items = core.store.items_by_key(wanted)
    rows = []
    for key in wanted:
        item = items.get(key)
        value = made[key]
        if item is not None and item.path and value is not None:
            rows.append((item.label, item.path, item.size, item.mtime_ns, *value))
    Thumbnails(core.root, readonly=False).keep(rows)


def keep_files(core: CatalogCore, keys: Sequence[str]) -> None:
    """Thumbnails of the image files of ``keys``' items, read now and kept (for an item added
    one at a time, `Catalog.add`, whose pixels the embedder does not hand on)."""
    if core.readonly:
        return
    rows = []
    for item in core.store.items_by_key(list(keys)).values():
        status = _status(item.path) if item.path else None
        if item.path and status is not None:
            for thumb, descriptor in Thumbnails._read([(item.label, item.path)]).values():
                size, mtime_ns = (item.size, item.mtime_ns) if item.size is not None else status
                rows.append((item.label, item.path, size, mtime_ns, thumb, descriptor))
    Thumbnails(core.root, readonly=False).keep(rows)


def _packed(descriptor: np.ndarray) -> bytes:
    return descriptor.astype("<f2").tobytes()
