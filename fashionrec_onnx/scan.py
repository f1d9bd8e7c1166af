"""What to index: image files under a folder, and optional metadata read from CSV or JSON lines."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import CatalogError
from .images import IMAGE_SUFFIXES

KEY_COLUMNS = ("key", "path", "id", "filename", "file")


@dataclass(frozen=True)
class ImageFile:
    """An image on disk: its key (the key prefix, then the path relative to the indexed folder),
    that relative path (what metadata files name) and change markers."""

    key: str
    path: Path
    size: int
    mtime_ns: int
    relative: str


def scan_folder(folder: str | os.PathLike[str], key_prefix: str = "") -> Iterator[ImageFile]:
    """Image files below ``folder``, recursively, in a stable order; hidden entries skipped."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise CatalogError(f"{root} is not a folder of images.")
    root = root.resolve()
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith(".") or Path(name).suffix.lower() not in IMAGE_SUFFIXES:
                continue
            path = Path(directory, name)
            try:
                stat = path.stat()
            except OSError:
                continue  # vanished while scanning
            relative = path.relative_to(root).as_posix()
            yield ImageFile(key_prefix + relative, path, stat.st_size, stat.st_mtime_ns, relative)


def read_metadata(path: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """Metadata by key from a CSV (header row) or JSON lines file.

    The key column is the first of key, path, id, filename, file that exists (else the first
    column); its value is matched against item keys (relative paths) and also their stems.
    """
    source = Path(path).expanduser()
    if not source.is_file():
        raise CatalogError(f"metadata file {source} does not exist.")
    try:
        if source.suffix.lower() in (".jsonl", ".ndjson", ".json"):
            lines = source.read_text(encoding="utf-8").splitlines()
            rows = [json.loads(line) for line in lines if line.strip()]
        else:
            with source.open(newline="", encoding="utf-8-sig") as handle:
                rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, csv.Error) as exc:
        raise CatalogError(f"cannot read metadata file {source}: {exc}") from exc
    if not rows:
        return {}
    if not all(isinstance(row, dict) for row in rows):
        raise CatalogError(f"{source}: every JSON line must be an object.")
    columns = list(rows[0])
    key_column = next((c for c in KEY_COLUMNS if c in columns), columns[0])
    table: dict[str, dict[str, Any]] = {}
    for number, row in enumerate(rows, start=2):
        key = row.get(key_column)
        if key in (None, ""):
            raise CatalogError(f"{source}: row {number} has no {key_column!r}.")
        table[str(key)] = {k: v for k, v in row.items() if k != key_column and k is not None}
    return table


def metadata_for(key: str, table: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """Look a key up by relative path, then by file name, then by stem (a product id)."""
    if key in table:
        return table[key]
    name = key.rsplit("/", 1)[-1]
    if name in table:
        return table[name]
    return table.get(name.rsplit(".", 1)[0])
