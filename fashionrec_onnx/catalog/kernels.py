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
_blas_lock = threading.Lock()


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
    them waiting for milliseconds. Scans take turns, so no scan restores another's setting."""
    global _controller
    with _blas_lock:
        if _controller is None:
            from threadpoolctl import ThreadpoolController

            _controller = ThreadpoolController()
        with _controller.limit(limits=1, user_api="blas"):
            yield
