"""A 64-bit DCT perceptual hash (pHash), measured as a second near-duplicate signal beside the
embeddings (`benchmarks.duplicate_signals`); not part of the library: on Fashion-MNIST it does not
separate copies from look-alike images (see that benchmark).

The image as the model sees it, grey, 32x32 (area average), 2-D DCT; the 8x8 lowest frequencies,
each bit saying whether a coefficient is above their median (the DC term left out of the median).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

BITS = 64
_SIDE = 32
_LOW = 8
_GREY = np.array([0.299, 0.587, 0.114], np.float32)


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    matrix = np.cos(np.pi * (2 * np.arange(n)[None, :] + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    matrix[0] /= np.sqrt(2.0)
    return matrix.astype(np.float32)


_DCT = _dct_matrix(_SIDE)[:_LOW]  # only the low rows are needed


def image_hashes(pixels: np.ndarray) -> np.ndarray:
    """64-bit hashes (uint64) of uint8 RGB images ``(N, H, W, 3)`` or one ``(H, W, 3)``."""
    batch = np.asarray(pixels)
    single = batch.ndim == 3
    if single:
        batch = batch[None]
    out = np.zeros(len(batch), np.uint64)
    weights = (1 << np.arange(BITS - 1, -1, -1, dtype=np.uint64)).astype(np.uint64)
    for row, image in enumerate(batch):
        grey = image.astype(np.float32) @ _GREY
        small = np.asarray(
            Image.fromarray(grey, "F").resize((_SIDE, _SIDE), Image.Resampling.BOX), np.float32
        )
        low = (_DCT @ small @ _DCT.T).reshape(-1)
        bits = low > np.median(low[1:])
        out[row] = np.sum(weights[bits], dtype=np.uint64)
    return out[:1] if single else out


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bits that differ between two arrays of uint64 hashes."""
    x = np.bitwise_xor(np.asarray(a, np.uint64), np.asarray(b, np.uint64))
    return np.unpackbits(x.view(np.uint8).reshape(-1, 8), axis=1).sum(axis=1).astype(np.int64)
