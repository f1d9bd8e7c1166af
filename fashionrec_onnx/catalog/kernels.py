"""The inner loops of scans: float16 conversion, and BLAS without thread wake-ups.

numpy converts float16 element by element; onnxruntime's Cast (MLAS) does it with SIMD, so the
conversion is a one-node ONNX graph, kept serialised here so the runtime needs no `onnx` package
(the tests rebuild it with `onnx` and compare bytes; opset 17, IR version 8), and run by a
one-thread session that never waits for another thread.
"""

from __future__ import annotations

import base64
import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np

GRAPHS = {
    "to_float32": (
        "CAgSCmZhc2hpb25yZWM6ZgofCgRoYWxmEgZzaW5nbGUiBENhc3QqCQoCdG8YAaABAhINaGFsZl90b19mbG9hdFoYCgRoYWxm"
        "EhAKDggKEgoKAxIBbgoDEgFkYhoKBnNpbmdsZRIQCg4IARIKCgMSAW4KAxIBZEIECgAQEQ=="
    ),
}
_sessions: dict[str, Any] = {}
_lock = threading.Lock()
_controller: Any = None
_blas_lock = threading.RLock()  # a scan's transform may project a few rows inside it


def graph_bytes(name: str) -> bytes:
    return base64.b64decode(GRAPHS[name])


def _session(name: str) -> Any:
    with _lock:
        session = _sessions.get(name)
        if session is None:
            from ..model import create_session

            session = _sessions[name] = create_session(graph_bytes(name), threads=1)
        return session


def to_float32(block: np.ndarray) -> np.ndarray:
    """Rows as float32 (float16 through the vectorised Cast)."""
    if block.dtype == np.float32:
        return block
    return _session("to_float32").run(None, {"half": np.ascontiguousarray(block)})[0]


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """BLAS on the calling thread, for a scan with one query (a matrix-vector product each
    block): OpenBLAS would wake its worker threads for every block, and a busy machine keeps
    them waiting for milliseconds. Scans take turns, so no scan restores another's setting; a
    thread already inside may enter again."""
    global _controller
    with _blas_lock:
        if _controller is None:
            from threadpoolctl import ThreadpoolController

            _controller = ThreadpoolController()
        with _controller.limit(limits=1, user_api="blas"):
            yield


def few_rows_times(rows: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """``rows @ matrix.T`` for a query or a few (a PCA projection): BLAS on one thread, 53 us
    for one 2048-d row and 256 components, where einsum took 135 us and two BLAS threads risk
    the wait above (this machine, quiet). While another thread's scan holds BLAS, einsum: a
    query's projection never waits for a scan (its tier estimates still take their turn)."""
    if not _blas_lock.acquire(blocking=False):
        return np.einsum("nd,od->no", rows, matrix)
    try:
        with one_blas_thread():
            return rows @ matrix.T
    finally:
        _blas_lock.release()


def _scaled(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows in float64 divided by their largest absolute value (rows of zeros, NaN or inf as
    they are), and those scales."""
    rows = np.asarray(rows, np.float64)
    with np.errstate(all="ignore"):
        scale = np.max(np.abs(rows), axis=-1, keepdims=True, initial=0.0)
        safe = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)
        return rows / safe, safe[..., 0]


NORM_BLOCK = 512  # rows squared in float64 at a time (4 MB of 2048-d rows: stays in cache)


def row_norms(rows: np.ndarray) -> np.ndarray:
    """Euclidean norms of the last axis, in float64, so a float32 row never overflows (3e38
    squared is inf in float32) nor underflows (1e-30 squared is 0): only a row holding NaN or an
    infinity, or a float64 one whose norm is over 1.8e308, gets a norm that is not finite.

    Rows of 32 bits or fewer are summed in float64 a block at a time (their squares cannot
    overflow or vanish there): ten times the speed of scaling a float64 copy of a whole batch,
    which float64 rows still get (each divided by its largest value first)."""
    rows = np.asarray(rows)
    if rows.dtype.kind == "f" and rows.dtype.itemsize <= 4 and rows.ndim == 2:
        squares = np.empty(len(rows), np.float64)
        for start in range(0, len(rows), NORM_BLOCK):
            block = rows[start : start + NORM_BLOCK].astype(np.float64)
            squares[start : start + NORM_BLOCK] = np.einsum("nd,nd->n", block, block)
        return np.sqrt(squares)
    scaled, scale = _scaled(rows)
    with np.errstate(all="ignore"):
        norms: np.ndarray = np.linalg.norm(scaled, axis=-1) * scale
    return norms


def vector_problem(vector: np.ndarray) -> str | None:
    """Why a vector has no direction to search or store, or None."""
    vector = np.asarray(vector)
    if not np.isfinite(vector).all():
        return "it holds NaN or infinite values"
    if not vector.any():
        return "it is zero"
    return None


def normalised(rows: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length in float64, then as float32: any finite, non-zero row keeps its
    direction however large or small its values (1e308 in float64 included: the row is divided
    by its largest value before its norm is taken). Rows without a direction (`vector_problem`)
    come back as NaN for the caller to refuse.

    Rows of 32 bits or fewer need no scaling first (their squares neither overflow nor vanish in
    float64): one query's unit vector in 15 us, not 100 us."""
    rows = np.asarray(rows)
    if rows.dtype.kind == "f" and rows.dtype.itemsize <= 4:
        wide = rows.astype(np.float64)
        with np.errstate(all="ignore"):
            norms = np.sqrt(np.einsum("...d,...d->...", wide, wide))[..., None]
            unit = wide / np.where(np.isfinite(norms) & (norms > 0), norms, np.nan)
        return unit.astype(np.float32)
    scaled, _ = _scaled(rows)
    with np.errstate(all="ignore"):
        norms = np.linalg.norm(scaled, axis=-1, keepdims=True)
        unit = scaled / np.where(np.isfinite(norms) & (norms > 0), norms, np.nan)
    return unit.astype(np.float32)
