"""The thumbnails' "one photo" rule (`thumbnails.same_photo`) for many pairs at once.

`thumbnails.compare` costs 1-2 ms a pair in Python calls (profiles interpolated, PIL resizes,
scipy blurs), an hour at a million items. Every step of it is linear in the pixels, so each is a
matrix: the profile cut search is the outer profile times a fixed interpolation matrix (one per
pair of profile lengths), a resize with a box is a row matrix on the left and a column matrix on
the right (PIL's bicubic coefficients, the same arithmetic), and the blur a Gaussian matrix with
scipy's reflected border folded into them. Pairs are stacked and multiplied in batches (BLAS),
thumbnails padded with zeros to the batch's side, which leaves every sum of a correlation as it was.

The arithmetic differs from the per-pair path only in rounding. So the answer is the same, the
few pairs where rounding could matter are settled by `thumbnails.same_photo` itself: a cut search
whose two best cuts tie (within `_TIE`), or a best correlation within `_BORDER` of its threshold.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import numpy as np

from ..model import default_threads
from . import thumbnails as rule
from .kernels import one_blas_thread

_TIE = 1e-9  # cut scores (float64) this close: the per-pair search might pick the other cut
_BORDER = 1e-4  # correlations this close to SHARP or BLURRED: rounding might tip the answer
_PAIRS = 512  # pairs multiplied at a time
_PART = 1024  # fewest pairs worth a thread of their own
_CUT_PAIRS = 256  # pairs of profiles searched at a time (their scores stay in the CPU's cache)


def same_photos(thumbs: Sequence[np.ndarray], first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """``same_photo(thumbs[first[i]], thumbs[second[i]])`` for every i, as booleans. Parts of the
    pairs run on every core, each with one BLAS thread (OpenBLAS's own threads wait for each
    other on products this small)."""
    first, second = np.asarray(first, np.int64), np.asarray(second, np.int64)
    parts = max(1, min(default_threads(), len(first) // _PART))
    bounds = np.linspace(0, len(first), parts + 1).astype(int).tolist()
    with one_blas_thread():
        if parts == 1:
            return _same_photos(thumbs, first, second)
        with ThreadPoolExecutor(parts, thread_name_prefix="fashionrec-pixels") as pool:
            done = pool.map(
                lambda i: _same_photos(
                    thumbs, first[bounds[i] : bounds[i + 1]], second[bounds[i] : bounds[i + 1]]
                ),
                range(parts),
            )
            return np.concatenate(list(done))


def _same_photos(thumbs: Sequence[np.ndarray], first: np.ndarray, second: np.ndarray) -> np.ndarray:
    count = len(first)
    answer = np.zeros(count, bool)
    if count == 0:
        return answer
    heights = np.asarray([t.shape[0] for t in thumbs], np.int64)
    widths = np.asarray([t.shape[1] for t in thumbs], np.int64)
    floats = [t.astype(np.float32) for t in thumbs]
    columns = [f.mean(axis=0) for f in floats]  # as `_lined_up` takes them
    rows = [f.mean(axis=1) for f in floats]
    standard = {
        id(columns): [rule._standardised(c) for c in columns],
        id(rows): [rule._standardised(r) for r in rows],
    }
    settle = np.zeros(count, bool)
    cuts = np.zeros((3, count, 4), np.int64)  # indices into _CUTS: left, top, right, bottom
    for config, (outer, inner) in enumerate(((first, second), (second, first))):
        for low, high, profiles in ((0, 2, columns), (1, 3, rows)):
            best, tied = _cut_search(profiles, standard[id(profiles)], outer, inner)
            cuts[config, :, low], cuts[config, :, high] = np.divmod(best, len(rule._CUTS))
            settle |= tied
    sharp = np.full(count, -1.0)
    blurred = np.full(count, -1.0)
    for config, (outer, inner) in enumerate(((first, second), (second, first), (first, second))):
        shape = (heights[outer], widths[outer], heights[inner], widths[inner])
        s, b = _correlations(thumbs, outer, inner, shape, cuts[config])
        sharp, blurred = np.maximum(sharp, s), np.maximum(blurred, b)
    answer = (sharp >= rule.SHARP) | (blurred >= rule.BLURRED)
    clear = (sharp >= rule.SHARP + _BORDER) | (blurred >= rule.BLURRED + _BORDER)
    close = (np.abs(sharp - rule.SHARP) < _BORDER) | (np.abs(blurred - rule.BLURRED) < _BORDER)
    settle |= close & ~clear
    for i in np.flatnonzero(settle).tolist():
        answer[i] = rule.same_photo(thumbs[first[i]], thumbs[second[i]])
    return answer


# -- lining up: the cut search --------------------------------------------------------------


@lru_cache(maxsize=256)
def _interpolation(n: int, m: int) -> tuple[np.ndarray, ...]:
    """`_cut`'s ``np.interp`` of an outer profile of length n at each cut's m positions, as
    matrices over the cuts: each position reads two neighbouring samples, so the sum, the sum of
    squares and the product with the inner profile are small products. Returns ``(taps (m, B),
    band (m * B, cuts), sums (n, cuts), squares (2n - 1, cuts))``: the products with the inner
    profile read B samples around each position, squares take the squares and the products of
    neighbouring samples."""
    cuts = rule._CUTS
    centres = (np.arange(n) + 0.5) / n
    along = (np.arange(m) + 0.5) / m
    low, high = cuts[:, None, None], cuts[None, :, None]
    positions = (low + along[None, None, :] * (1.0 - low - high)).reshape(-1, m)  # (cuts, m)
    weights = np.zeros((len(positions), m, n))  # cut, position, outer sample
    if n == 1:
        weights[..., 0] = 1.0
    else:
        left = np.clip(np.searchsorted(centres, positions, side="right") - 1, 0, n - 2)
        share = np.clip((positions - centres[left]) / (centres[left + 1] - centres[left]), 0.0, 1.0)
        c, p = np.indices(positions.shape)
        weights[c, p, left] = 1.0 - share
        weights[c, p, left + 1] += share
    used = np.asarray(weights.any(axis=0))  # (m, n): samples some cut reads at each position
    first = used.argmax(axis=1)
    last = n - 1 - used[:, ::-1].argmax(axis=1)
    width = int((last - first).max()) + 1
    taps = np.minimum(first[:, None] + np.arange(width)[None, :], n - 1)  # (m, width)
    valid = first[:, None] + np.arange(width)[None, :] <= last[:, None]
    band = np.take_along_axis(weights, np.broadcast_to(taps[None], (len(positions), m, width)), axis=2)
    band = np.where(valid[None], band, 0.0).reshape(len(positions), m * width).T
    sums = np.ascontiguousarray(weights.sum(axis=1).T)
    squares = np.concatenate(
        [(weights**2).sum(axis=1).T, (weights[:, :, :-1] * weights[:, :, 1:]).sum(axis=1).T]
    )
    return taps, np.ascontiguousarray(band), sums, squares


def _cut_search(
    profiles: Sequence[np.ndarray], standard: Sequence[np.ndarray], outer: np.ndarray, inner: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """`_cut` of each pair's profiles (``standard``: each profile as `_standardised` gives it):
    the flat index of the best (low, high) cut, and whether the two best scores tie."""
    lengths = np.asarray([len(p) for p in profiles], np.int64)
    best = np.zeros(len(outer), np.int64)
    tied = np.zeros(len(outer), bool)
    keys = lengths[outer] * 4096 + lengths[inner]
    for key in np.unique(keys).tolist():
        n, m = divmod(key, 4096)
        where = np.flatnonzero(keys == key)
        taps, band, sums, squares = _interpolation(n, m)
        for start in range(0, len(where), _CUT_PAIRS):
            chosen = where[start : start + _CUT_PAIRS]
            o = np.stack([profiles[i] for i in outer[chosen].tolist()]).astype(np.float64)
            z = np.stack([standard[i] for i in inner[chosen].tolist()]).astype(np.float64)
            # the sampled profile's sum, sum of squares and product with z: in place, in cache
            total = o @ sums
            square = np.concatenate([o * o, 2.0 * o[:, :-1] * o[:, 1:]], axis=1) @ squares
            score = (o[:, taps] * z[:, :, None]).reshape(len(chosen), -1) @ band
            scratch = total * (z.sum(axis=1, keepdims=True) / m)
            score -= scratch
            np.multiply(total, total, out=scratch)
            scratch *= 1.0 / m
            square -= scratch
            np.maximum(square, 0.0, out=square)
            np.sqrt(square, out=square)
            np.maximum(square, 1e-6, out=square)
            score /= square
            top = np.argmax(score, axis=1)
            rows = np.arange(len(chosen))
            first = score[rows, top]
            score[rows, top] = -np.inf
            second = score.max(axis=1)
            best[chosen] = top
            tied[chosen] = first - second <= _TIE * np.maximum(1.0, np.abs(first))
    return best, tied


# -- lined up: resized, blurred, correlated --------------------------------------------------


def _bicubic(x: np.ndarray) -> np.ndarray:
    """Pillow's bicubic filter (a = -0.5)."""
    x = np.abs(x)
    a = -0.5
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


@lru_cache(maxsize=65536)
def _resize(size_in: int, size_out: int, box_low: float, box_high: float) -> np.ndarray:
    """``(size_out, size_in)``: Pillow's bicubic resample of one axis from the box
    ``[box_low, box_high)`` of the input to ``size_out`` pixels (antialiased when reducing)."""
    scale = (box_high - box_low) / size_out
    filterscale = max(scale, 1.0)
    support = 2.0 * filterscale
    matrix = np.zeros((size_out, size_in))
    for out in range(size_out):
        centre = box_low + (out + 0.5) * scale
        low = max(int(centre - support + 0.5), 0)  # C's (int): truncated towards zero
        high = min(int(centre + support + 0.5), size_in)
        taps = np.arange(low, high)
        weights = _bicubic((taps - centre + 0.5) * (1.0 / filterscale))
        total = weights.sum()
        matrix[out, low:high] = weights / total if total != 0.0 else weights
    return matrix


@lru_cache(maxsize=4096)
def _gaussian(size: int, sigma: float) -> np.ndarray:
    """``(size, size)``: scipy's ``gaussian_filter1d`` (reflected border, truncated at 4 sigma)."""
    if sigma <= 1e-15:
        return np.eye(size)
    radius = int(4.0 * sigma + 0.5)
    offsets = np.arange(-radius, radius + 1)
    weights = np.exp(-0.5 / (sigma * sigma) * offsets**2)
    weights /= weights.sum()
    matrix = np.zeros((size, size))
    for out in range(size):
        source = np.mod(out + offsets, 2 * size)
        source = np.where(source >= size, 2 * size - 1 - source, source)
        np.add.at(matrix[out], source, weights)
    return matrix


def _correlations(
    thumbs: Sequence[np.ndarray],
    outer: np.ndarray,
    inner: np.ndarray,
    shape: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    cuts: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """(sharp, blurred) of `compare`'s one lining up per pair: ``inner`` inside ``outer`` at
    ``cuts`` (indices into _CUTS, left top right bottom)."""
    ho, wo, hi, wi = shape
    left, top, right, bottom = (rule._CUTS[cuts[:, i]] for i in range(4))
    width = np.maximum(2, np.minimum(wi, np.rint((1 - left - right) * wo).astype(np.int64)))
    height = np.maximum(2, np.minimum(hi, np.rint((1 - top - bottom) * ho).astype(np.int64)))
    blur = np.minimum(height, width)  # the blur's sigma is a share of the smaller side
    whole = np.full(len(outer), -1)
    axes = {  # per pair: size in, size out, cut indices (-1: the whole image), blur side
        "x rows": np.stack([ho, height, cuts[:, 1], cuts[:, 3], blur], axis=1),
        "x columns": np.stack([wo, width, cuts[:, 0], cuts[:, 2], blur], axis=1),
        "y rows": np.stack([hi, height, whole, whole, blur], axis=1),
        "y columns": np.stack([wi, width, whole, whole, blur], axis=1),
    }
    rows_size = (np.maximum.reduce([ho, hi, height]) + 7) // 8 * 8
    columns_size = (np.maximum.reduce([wo, wi, width]) + 7) // 8 * 8
    sharp = np.zeros(len(outer))
    blurred = np.zeros(len(outer))
    buckets = rows_size * 4096 + columns_size
    for bucket in np.unique(buckets).tolist():
        ph, pw = divmod(bucket, 4096)
        where = np.flatnonzero(buckets == bucket)
        for start in range(0, len(where), _PAIRS):
            chosen = where[start : start + _PAIRS]
            m = {
                name: _axis_matrices(codes[chosen], ph if "rows" in name else pw)
                for name, codes in axes.items()
            }
            a = _padded(thumbs, outer[chosen], ph, pw)
            b = _padded(thumbs, inner[chosen], ph, pw)
            pixels = (height[chosen] * width[chosen]).astype(np.float64)
            x = _product(m["x rows"][0], a, m["x columns"][0])
            y = _product(m["y rows"][0], b, m["y columns"][0])
            sharp[chosen] = _correlation(x, y, pixels)
            x = _product(m["x rows"][1], a, m["x columns"][1])
            y = _product(m["y rows"][1], b, m["y columns"][1])
            blurred[chosen] = _correlation(x, y, pixels)
    return sharp, blurred


def _axis_matrices(codes: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Each pair's resize matrix of one axis and the same followed by the blur, ``(pairs, size,
    size)`` float32 (zeros outside the sizes out and in)."""
    unique, inverse = np.unique(codes, axis=0, return_inverse=True)
    plain = np.zeros((len(unique), size, size), np.float32)
    blurred = np.zeros_like(plain)
    for row, (size_in, size_out, low, high, side) in enumerate(unique.tolist()):
        resize, blur = _axis(size_in, size_out, low, high, side)
        plain[row, :size_out, :size_in] = resize
        blurred[row, :size_out, :size_in] = blur
    inverse = inverse.reshape(-1)
    return plain[inverse], blurred[inverse]


@lru_cache(maxsize=65536)
def _axis(size_in: int, size_out: int, low: int, high: int, side: int) -> tuple[np.ndarray, np.ndarray]:
    """One axis of `_lined_up` (the box from cut indices ``low``, ``high``; -1 for the whole
    image) and of its blur in `compare`, as (resize, blur after resize) matrices."""
    cuts = rule._CUTS
    box = (0.0, float(size_in)) if low < 0 else (cuts[low] * size_in, (1 - cuts[high]) * size_in)
    resize = _resize(size_in, size_out, *box)
    return resize, _gaussian(size_out, rule._COMPARE_BLUR * side) @ resize


def _padded(thumbs: Sequence[np.ndarray], which: np.ndarray, height: int, width: int) -> np.ndarray:
    """``(len(which), height, width)`` float32: each thumbnail in the top left corner, zeros around."""
    unique, inverse = np.unique(which, return_inverse=True)
    out = np.zeros((len(unique), height, width), np.float32)
    for row, index in enumerate(unique.tolist()):
        thumb = thumbs[index]
        out[row, : thumb.shape[0], : thumb.shape[1]] = thumb
    return out[inverse.reshape(-1)]


def _product(left: np.ndarray, pixels: np.ndarray, right: np.ndarray) -> np.ndarray:
    result: np.ndarray = np.matmul(np.matmul(left, pixels), right.transpose(0, 2, 1)).astype(np.float64)
    return result


def _correlation(x: np.ndarray, y: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """Pearson correlation of each pair's pixels (zeros outside its ``pixels`` count add nothing)."""
    sx, sy = x.sum(axis=(1, 2)), y.sum(axis=(1, 2))
    xx = np.einsum("pij,pij->p", x, x) - sx * sx / pixels
    yy = np.einsum("pij,pij->p", y, y) - sy * sy / pixels
    xy = np.einsum("pij,pij->p", x, y) - sx * sy / pixels
    scale = np.sqrt(np.maximum(xx, 0.0) * np.maximum(yy, 0.0))
    flat = (xx <= 1e-6 * pixels) | (yy <= 1e-6 * pixels)  # `_standardised` of a flat image is 0
    return np.where(flat | (scale == 0), 0.0, xy / np.where(scale == 0, 1.0, scale))
