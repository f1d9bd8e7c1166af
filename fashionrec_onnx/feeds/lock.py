"""The lock a catalog's removers share (a sync's prune, `index --prune`): one at a time.

Each removes the items it did not see written; two at once would remove each other's fresh
items. The lock is ``<catalog>/.sync.lock`` (for a catalog on a server, a folder of this
machine's cache), taken without waiting: a second remover is refused, not queued.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import CatalogError

if TYPE_CHECKING:
    from ..catalog import Catalog

SYNC_LOCK = ".sync.lock"


def catalog_home(catalog: Catalog) -> Path:
    """The local folder of a catalog's sync: its directory, or for a catalog on a server a folder
    of this machine's cache (one sync at a time is then held per machine)."""
    if isinstance(catalog.path, Path):
        return catalog.path.resolve()
    home = catalog.path.local_folder()
    home.mkdir(parents=True, exist_ok=True)
    return home


@contextlib.contextmanager
def one_remover(root: Path, job: str = "sync") -> Iterator[None]:
    """The catalog's sync lock, taken without waiting by the jobs that remove items they did not
    see written (a sync's prune, `index --prune`): a second one is refused, not queued."""
    path = root / SYNC_LOCK
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)  # never truncate a link's target
    except OSError as exc:
        raise CatalogError(f"cannot create the sync lock {path} ({exc.strerror}); nothing was done.") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid, _, other = os.pread(fd, 64, 0).decode(errors="replace").strip().partition(" ")
            running = "another sync" if (other or "sync") == "sync" else f"an `{other}`"
            raise CatalogError(
                f"{running} of {root} is running (process {pid or 'unknown'}); one at a time: each "
                "would remove what the other is writing. Nothing was done; run it again when that "
                "one ends."
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {job}".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock
