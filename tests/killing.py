"""kill -9 at a chosen moment: crash tests run a writer in a child process and SIGKILL it once
enough of its work is committed."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable


def kill_when(process: subprocess.Popen, ready: Callable[[], bool], timeout: float = 120.0) -> None:
    """SIGKILL ``process`` as soon as ``ready()``; it must still be running then."""
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            assert process.poll() is None, "the process finished before it could be killed"
            assert time.monotonic() < deadline, "the process made no progress"
            time.sleep(0.01)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
