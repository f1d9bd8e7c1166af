"""Import TensorFlow without its start-up log lines, and without hiding anything else.

Why the lines appeared twice: TensorFlow's wheel (2.21 here) links its C++ runtime (TSL, with a
private copy of absl logging) into two libraries that ``import tensorflow`` loads:
``libtensorflow_framework.so.2`` and the profiler plugin
``tensorflow/python/profiler/internal/_pywrap_profiler_plugin.so`` (imported by TensorFlow's own
``profiler_client``). Each copy runs the same static initialisers, which log "oneDNN custom
operations are on" and "Could not find cuda drivers" as the library is loaded: before
``absl::InitializeLog()`` and before ``TF_CPP_MIN_LOG_LEVEL`` takes effect, so that variable, set
in time, still cannot silence them. Everything TensorFlow logs afterwards does honour it.

So the first import runs with the process's standard error (file descriptor 2, where C++ writes)
sent to a temporary file, and what it caught is passed on afterwards, minus the log records below
the level ``TF_CPP_MIN_LOG_LEVEL`` asks for. Lines that are not TensorFlow log records (a Python
warning, a crash message) are always passed on.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

# An absl/TSL log record: severity letter, date, time, thread, file:line]. Before
# absl::InitializeLog() the date is 0000 and the time 00:00:<seconds since the epoch>.
_RECORD = re.compile(r"^([IWEF])\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ \S+:\d+\] ")
_ABSL_NOTICE = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
_SEVERITY = {"I": 0, "W": 1, "E": 2, "F": 3}
DEFAULT_MIN_LOG_LEVEL = "3"  # the no-GPU "errors" (cuInit failed) are noise on a CPU machine


def min_log_level() -> int:
    """TensorFlow's own setting: 0 shows everything, 1 hides INFO, 2 also WARNING, 3 also ERROR."""
    try:
        return int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
    except ValueError:
        return 0


def filter_startup_log(text: str, level: int) -> str:
    """Keep the records at or above ``level``, and lines before the first record.

    ``text`` is what C++ code wrote, so a line without a record header continues the record
    above it (TensorFlow's CPU-feature notice takes two lines) and shares its fate.
    """
    kept: list[str] = []
    keep = True
    for line in text.splitlines(keepends=True):
        record = _RECORD.match(line)
        if record:
            keep = _SEVERITY[record.group(1)] >= level
        elif line.rstrip("\n") == _ABSL_NOTICE:
            keep = level == 0  # absl's note that early records go to stderr: only with those records
        if keep:
            kept.append(line)
    return "".join(kept)


def _fileno(stream: object) -> int | None:
    try:
        return stream.fileno()  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return None


@contextmanager
def _startup_log_filtered() -> Iterator[None]:
    """Catch what C++ code writes to file descriptor 2 in a temporary file, then pass on what is
    not noise. Python's own writes (warnings, tracebacks) bypass the catch and go out at once.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    python_stderr = sys.stderr
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        if _fileno(python_stderr) == 2:
            sys.stderr = open(saved, "w", buffering=1, closefd=False, errors="backslashreplace")  # noqa: SIM115
        try:
            yield
        finally:
            if sys.stderr is not python_stderr:
                sys.stderr.close()
                sys.stderr = python_stderr
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            text = caught.read().decode("utf-8", errors="replace")
            passed = filter_startup_log(text, min_log_level())
            if passed:
                sys.stderr.write(passed)
                sys.stderr.flush()


def import_tensorflow() -> None:
    """Import TensorFlow and Keras once per process, with the log settings applied first."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", DEFAULT_MIN_LOG_LEVEL)
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    if "tensorflow" in sys.modules and "keras" in sys.modules:
        return
    with _startup_log_filtered():
        import keras  # noqa: F401  (imports tensorflow, its backend)
        import tensorflow  # noqa: F401
