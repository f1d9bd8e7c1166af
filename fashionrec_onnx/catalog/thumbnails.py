"""Small grey thumbnails of the catalog's images: the second near-duplicate signal beside the
embeddings (see `duplicates`).

Random or ImageNet embeddings find a photo's look-alikes as readily as its copies, and a copy at
half size no longer sits among its original's nearest neighbours. Pixels settle it. A thumbnail
(grey, at most ``SIDE`` pixels a side, never enlarged) is kept per item, and each gives a
*canonical* descriptor: the object centred and scaled by its intensity moments, blurred, so that
rescaling, recompression and cutting a few percent off a side move it little. The descriptors
find candidate pairs (nearest neighbours), and `compare` decides: it finds the cut (0-5% a side,
either image inside the other) that best lines up the two thumbnails' row and column profiles,
brings both to the coarser one's pixels (an antialiased resize, as the copy was made), and calls
them the same photo when they correlate at least ``SHARP`` as they are, or ``BLURRED`` after a
slight blur (recompression noise). Look-alike products of one template (plain trousers, plain
T-shirts) differ in details a resized copy keeps.

The thumbnails live in a side file, ``thumbnails.sqlite``, owned by this module: a cache filled
from the items' image paths the first time `duplicates` runs (and refreshed when a file's size or
time changes), so catalogs written before it need no migration. Items without a readable image
file (vectors added with `add_many` and no path) fall back to the embedding threshold alone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import ImageLoadError
from ..images import load_image
from .store import Item

log = logging.getLogger(__name__)

FILE_NAME = "thumbnails.sqlite"
SIDE = 64  # largest thumbnail side (pixels): 4 KB a square item
CANONICAL_SIDE = 16  # canonical descriptor: CANONICAL_SIDE x CANONICAL_SIDE samples
SHARP = 0.995  # correlation of two lined-up thumbnails from which they are one photo ...
BLURRED = 0.999  # ... or after a blur of _COMPARE_BLUR of their side (recompression noise)
GATE = 0.99  # canonical correlation below which two thumbnails of one scale are not compared
GATE_RESCALED = 0.9  # the same for thumbnails whose sizes differ by RESCALED or more
RESCALED = 1.5
_CUTS = np.arange(0.0, 0.0501, 0.0025)  # fractions cut off each side, tried when lining up
_COMPARE_BLUR = 0.043  # of the compared side (1.2 pixels of a 28 px image)
_WINDOW = 2.0  # the canonical window spans the centroid +- _WINDOW standard deviations
_SUPERSAMPLE = 4
_BLUR = 0.75  # canonical samples (Gaussian sigma): a half-size copy keeps this much detail
_BACKGROUND_TOLERANCE = 8.0  # grey levels around the border colour that do not count as object

_SCHEMA = """
CREATE TABLE IF NOT EXISTS thumbnails (
    label INTEGER PRIMARY KEY,
    path TEXT NOT NULL,
    size INTEGER,
    mtime_ns INTEGER,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    pixels BLOB NOT NULL
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
    """(sharp, blurred) correlation of two thumbnails lined up (`_lined_up`), the better of
    either one taken as inside the other."""
    best: tuple[float, np.ndarray, np.ndarray] | None = None
    for outer, inner in ((a, b), (b, a)):
        x, y = _lined_up(outer, inner)
        sharp = float(_standardised(x.reshape(-1)) @ _standardised(y.reshape(-1)))
        if best is None or sharp > best[0]:
            best = (sharp, x, y)
    assert best is not None
    from scipy.ndimage import gaussian_filter

    sharp, x, y = best
    sigma = _COMPARE_BLUR * min(x.shape)
    blurred = _standardised(gaussian_filter(x, sigma).reshape(-1)) @ _standardised(
        gaussian_filter(y, sigma).reshape(-1)
    )
    return sharp, float(blurred)


def same_photo(a: np.ndarray, b: np.ndarray) -> bool:
    """The rule: see the module doc."""
    sharp, blurred = compare(a, b)
    return sharp >= SHARP or blurred >= BLURRED


def _lined_up(outer: np.ndarray, inner: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``inner`` taken as ``outer`` with a little cut off each side: the cut whose row and column
    profiles match best, then both at the coarser one's pixels (antialiased, like a downscale)."""
    fo, fi = outer.astype(np.float32), inner.astype(np.float32)
    left, right = _cut(fo.mean(axis=0), fi.mean(axis=0))
    top, bottom = _cut(fo.mean(axis=1), fi.mean(axis=1))
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


class Thumbnails:
    """The side file of one catalog: label -> thumbnail, with the image file's size and time it
    was made from (a changed file is read again)."""

    def __init__(self, root: Path, *, readonly: bool) -> None:
        self.path = root / FILE_NAME
        self.readonly = readonly

    def _connect(self) -> sqlite3.Connection | None:
        """The side file, created when missing; a damaged one is a lost cache: made anew (or,
        read-only, left alone and the images read again)."""
        if self.readonly:
            if not self.path.exists():
                return None
            db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
            try:
                db.execute("SELECT count(*) FROM thumbnails LIMIT 1").fetchall()
            except sqlite3.DatabaseError as exc:
                db.close()
                log.warning("thumbnails in %s unusable (%s): reading the images again", self.path, exc)
                return None
            return db
        for attempt in range(2):
            db = sqlite3.connect(self.path, timeout=30.0)
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

    def get(self, items: Sequence[Item]) -> dict[int, np.ndarray]:
        """Thumbnails of the items that have an image file: stored ones when the file is
        unchanged, the others read now (and stored, unless the catalog is read-only)."""
        files: dict[int, tuple[str, int, int]] = {}
        for item in items:
            if item.path:
                try:
                    status = os.stat(item.path)
                except OSError:
                    continue  # the file is gone: no pixels to compare
                files[item.label] = (item.path, status.st_size, status.st_mtime_ns)
        with_path = [item for item in items if item.label in files]
        found: dict[int, np.ndarray] = {}
        if not files:
            return found  # no image file: nothing to compare, nor to keep
        try:
            db = self._connect()
        except (sqlite3.Error, OSError) as exc:  # a cache: without it the images are read again
            log.warning("thumbnails in %s unusable (%s): reading the images again", self.path, exc)
            db = None
        with contextlib.closing(db) if db is not None else contextlib.nullcontext():
            stored: dict[int, np.ndarray] = {}
            if db is not None:
                try:
                    stored = self._stored(db, files)
                except sqlite3.DatabaseError as exc:
                    log.warning("thumbnails in %s unreadable (%s): reading the images again", self.path, exc)
            fresh: list[tuple[Item, np.ndarray]] = []
            for item in with_path:
                if item.label in stored:
                    found[item.label] = stored[item.label]
                    continue
                try:
                    thumb = thumbnail(load_image(Path(item.path)))  # type: ignore[arg-type]
                except (ImageLoadError, OSError) as exc:
                    log.debug("no thumbnail for %s: %s", item.key, exc)
                    continue
                found[item.label] = thumb
                fresh.append((item, thumb))
            if fresh and db is not None and not self.readonly:
                try:
                    with db:
                        db.executemany(
                            "INSERT OR REPLACE INTO thumbnails VALUES (?, ?, ?, ?, ?, ?, ?)",
                            [
                                (i.label, *files[i.label], t.shape[1], t.shape[0], t.tobytes())
                                for i, t in fresh
                            ],
                        )
                except sqlite3.Error as exc:  # a cache: failing to keep it costs time, not results
                    log.warning("could not store thumbnails in %s: %s", self.path, exc)
        return found

    @staticmethod
    def _stored(db: sqlite3.Connection, files: dict[int, tuple[str, int, int]]) -> dict[int, np.ndarray]:
        stored: dict[int, np.ndarray] = {}
        labels = list(files)
        for start in range(0, len(labels), 900):
            chunk = labels[start : start + 900]
            rows = db.execute(
                f"SELECT label, path, size, mtime_ns, width, height, pixels FROM thumbnails "
                f"WHERE label IN ({','.join('?' * len(chunk))})",
                chunk,
            ).fetchall()
            for label, path, size, mtime_ns, width, height, pixels in rows:
                if (path, size, mtime_ns) != files[label]:
                    continue  # another file now, or the same file changed
                if len(pixels) != width * height:
                    continue
                stored[label] = np.frombuffer(pixels, np.uint8).reshape(height, width)
        return stored
