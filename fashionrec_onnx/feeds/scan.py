"""What to index: image files under a folder, and optional metadata read from CSV or JSON lines.

Neither reader stops at one bad entry. A folder it cannot read, a link leading back into the
tree, or a file name that is not UTF-8 (it could not be stored as a key) is reported as skipped
and the scan goes on; doubtful metadata (a key given twice, a quote that swallows later rows) is
a warning naming the file and line.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import json
import logging
import math
import os
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from ..errors import CatalogError
from ..images import IMAGE_SUFFIXES
from ..json_values import MAX_DEPTH, DepthError, Refused, bad_field, loads_row, problem
from .metadata_match import MetadataTable

log = logging.getLogger(__name__)

KEY_COLUMNS = ("key", "path", "id", "filename", "file")
DUPLICATE_EXAMPLES = 3
MAX_TABLE_MB_ENV = "FASHIONREC_MAX_FEED_MB"  # the setting that raises the bound below
MAX_TABLE_MB = 1024  # a feed or metadata file is read whole (its rows are checked together)


@dataclass(frozen=True)
class ImageFile:
    """An image on disk: its key (the key prefix, then the path relative to the indexed folder),
    that relative path (what metadata files name) and change markers."""

    key: str
    path: Path
    size: int
    mtime_ns: int
    relative: str


@dataclass(frozen=True)
class Skipped:
    """A file or folder the scan left out, and why; ``relative`` is printable (see `printable`).

    ``folder`` entries hid whatever they hold: items indexed from there before are not gone.
    """

    relative: str
    reason: str
    folder: bool = False


def printable(text: str) -> str:
    """``text`` with the undecodable bytes of a file name shown as ``\\xe9`` escapes."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def is_utf8(text: str) -> bool:
    """False for names holding bytes that are not UTF-8 (Python keeps them as lone surrogates,
    which SQLite, JSON and the terminal all refuse)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _warn_skipped(skipped: Skipped) -> None:
    log.warning("skipped %s: %s", skipped.relative, skipped.reason)


def scan_folder(
    folder: str | os.PathLike[str],
    key_prefix: str = "",
    on_skip: Callable[[Skipped], None] | None = None,
) -> Iterator[ImageFile]:
    """Image files below ``folder``, recursively, in a stable order; hidden entries skipped.

    Links to folders outside the tree are followed, each folder once; links back into the tree
    are not (loops, second keys). What cannot be indexed goes to ``on_skip`` (default: a
    logged warning), and the scan goes on.
    """
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise CatalogError(f"{printable(str(root))} is not a folder of images.")
    root = root.resolve()
    if not is_utf8(str(root)):
        raise CatalogError(f"the folder name {printable(str(root))} is not valid UTF-8: rename it.")
    if not is_utf8(key_prefix):
        raise CatalogError(f"the key prefix '{printable(key_prefix)}' is not valid UTF-8.")
    skip = on_skip or _warn_skipped
    seen = {_identity(root.stat())}
    pending = [(root, "")]  # folders still to scan, the next one last
    while pending:
        directory, relative = pending.pop()
        try:
            with os.scandir(directory) as listing:
                entries = sorted(listing, key=lambda entry: entry.name)
        except OSError as exc:
            skip(Skipped(printable(relative or "."), f"cannot read this folder ({exc.strerror})", True))
            continue
        subfolders = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            name = relative + entry.name
            image = Path(entry.name).suffix.lower() in IMAGE_SUFFIXES
            if not (image or entry.is_symlink() or entry.is_dir(follow_symlinks=False)):
                continue  # a plain file that is not an image: not worth a stat
            try:
                info = entry.stat()  # follows links
            except OSError as exc:
                if image or exc.errno == errno.ELOOP:
                    skip(Skipped(printable(name), f"cannot read it ({exc.strerror})"))
                continue  # else: a dangling link that is no image, or gone while scanning
            if entry.is_dir():
                problem = _folder_problem(entry, info, root, seen)
                if problem:
                    skip(Skipped(printable(name + "/"), problem, folder=not is_utf8(entry.name)))
                else:
                    seen.add(_identity(info))
                    subfolders.append((Path(entry.path), name + "/"))
            elif image and not is_utf8(entry.name):
                skip(Skipped(printable(name), "the file name is not valid UTF-8: rename it"))
            elif image:
                yield ImageFile(key_prefix + name, Path(entry.path), info.st_size, info.st_mtime_ns, name)
        pending.extend(reversed(subfolders))


def _folder_problem(entry: os.DirEntry[str], info: os.stat_result, root: Path, seen: set) -> str | None:
    """Why a subfolder is not scanned, if it is not. A link to a folder is followed only when it
    leads out of the tree to a folder not scanned yet: a link to a folder above it would loop, a
    link into the tree would give images a second key, and so would a second link outside."""
    if not is_utf8(entry.name):
        return "the folder name is not valid UTF-8: rename it"
    if not entry.is_symlink():
        return None
    target = Path(entry.path).resolve()
    if Path(entry.path).parent.resolve().is_relative_to(target):
        return f"a link to {printable(str(target))}, a folder above it (a loop): not followed"
    if target.is_relative_to(root):
        inside = target.relative_to(root).as_posix()
        where = "the indexed folder itself" if inside == "." else f"{printable(inside)}/"
        return f"a link to {where}, which is indexed under its own name: not followed"
    if _identity(info) in seen:
        return f"a link to {printable(str(target))}, scanned already through another link: not followed"
    return None


def _identity(stat: os.stat_result) -> tuple[int, int]:
    return stat.st_dev, stat.st_ino


def cell_text(value: Any) -> str:
    """A cell as text: JSON numbers (a product id of 1042) read like CSV's ``"1042"``. Anything
    else (NaN or Infinity, which would read as ``"nan"``; a list, an object, true) is a
    ``ValueError`` saying why: an image or a product id is text or a finite number."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, Refused) and value.text:  # an integer too long to store as a number
        return value.text
    if isinstance(value, float) and math.isfinite(value):
        return str(int(value)) if value.is_integer() else str(value)
    reason = problem(value) or f"{json.dumps(value)[:40]} is not text or a number"
    raise ValueError(reason)


# -- metadata -----------------------------------------------------------------------------


def read_metadata(path: str | os.PathLike[str]) -> MetadataTable:
    """Metadata by key from a CSV (header row) or JSON lines file, with each row's line.

    The key column is the first of key, path, id, filename, file that exists (else the first
    column); how its values are matched to images is `metadata_match.RULE`. A key given on
    several rows takes the last one (with a warning).
    """
    source = Path(path).expanduser()
    check_table_file(source, "metadata file")
    if source.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        rows = _read_json_lines(source)
    else:
        rows = _read_csv(source)
    if not rows:
        return MetadataTable({}, source=str(source))
    columns = list(rows[0][1])
    key_column = next((c for c in KEY_COLUMNS if c in columns), columns[0])
    table: dict[str, dict[str, Any]] = {}
    lines: dict[str, int] = {}
    repeated: list[str] = []
    for line, row in rows:
        key = row.get(key_column)
        if key in (None, ""):
            raise CatalogError(f"{source}, line {line}: no {key_column!r} value.")
        try:
            text = cell_text(key)  # NaN would be the key "nan"
        except ValueError as exc:
            raise CatalogError(
                f"{source}, line {line}: the {key_column!r} value: {exc}; fix the file."
            ) from None
        if isinstance(key, Refused):
            key = text  # an integer id too long for a number, as written
        if str(key) in table:
            repeated.append(str(key))
        table[str(key)] = {k: v for k, v in row.items() if k != key_column and k is not None}
        bad = bad_field(table[str(key)])
        if bad is not None:  # refused before a catalog is created or an image embedded
            raise CatalogError(f"{source}, line {line}: field {bad[0]!r}: {bad[1]}; fix the file.")
        lines[str(key)] = line
    if repeated:
        _warn_duplicates(source, rows, key_column, repeated)
    return MetadataTable(table, lines=lines, key_column=key_column, source=str(source))


def table_bound() -> int:
    """Bytes a feed or metadata file may hold: `MAX_TABLE_MB`, or the environment's setting."""
    text = os.environ.get(MAX_TABLE_MB_ENV, "").strip()
    if not text:
        return MAX_TABLE_MB << 20
    try:
        megabytes = float(text)
    except ValueError:
        megabytes = math.nan
    if not (math.isfinite(megabytes) and megabytes > 0):
        raise CatalogError(f"{MAX_TABLE_MB_ENV}={text[:40]!r} is not a positive number of megabytes.")
    return int(megabytes * (1 << 20))


def check_table_file(source: Path, what: str) -> None:
    """A feed or metadata file must be a regular file: a folder, a FIFO or a device is named as
    what it is (a FIFO would block the read, a device never end), not as missing."""
    try:
        mode = source.stat().st_mode
    except (OSError, ValueError):
        raise CatalogError(f"{what} {source} does not exist.") from None
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file (a FIFO, socket or device)"
        raise CatalogError(f"{what} {source} is {kind}; give the CSV or JSON lines file itself.")


def _check_size(source: Path, size: int) -> None:
    """A feed or metadata file over the bound is refused before it is read into memory."""
    bound = table_bound()
    if size > bound:
        raise CatalogError(
            f"{source} holds {size:,} bytes, over the {bound:,}-byte bound on a feed or metadata file "
            f"(read whole into memory); split it, or raise the bound with {MAX_TABLE_MB_ENV}=MEGABYTES."
        )


def _read_json_lines(
    source: Path, unreadable: list[tuple[int, str]] | None = None
) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-blank line (a leading UTF-8 BOM is skipped). A value
    that cannot be stored (NaN, an integer of 5,000 digits, nesting over the bound) is left in its
    row for `bad_field` to name. A line that cannot be read at all (not JSON, not an object, nested
    beyond `READ_DEPTH`) is refused with the file, or, given ``unreadable``, listed there."""
    try:
        with source.open("rb") as handle:
            _check_size(source, os.fstat(handle.fileno()).st_size)
            data = handle.read(table_bound() + 1)  # a file growing meanwhile is bounded too
        _check_size(source, len(data))
        text = data.decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise CatalogError(f"cannot read {source} (give UTF-8 text): {exc}") from exc
    rows = []
    # Lines end at \n only: str.splitlines would also split inside a value at U+2028, U+0085...
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = loads_row(line)  # a control character in a value is the row's problem
        except (RecursionError, DepthError):
            reason = (
                f"the JSON is nested too deeply to read (more than {MAX_DEPTH} levels); flatten the metadata"
            )
        except ValueError as exc:  # JSONDecodeError
            reason = f"not valid JSON ({exc})"
        else:
            if isinstance(row, dict):
                rows.append((number, row))
                continue
            reason = "every JSON line must be an object"
        if unreadable is None:
            raise CatalogError(f"{source}, line {number}: {reason}.")
        unreadable.append((number, reason))
    return rows


def _read_csv(source: Path) -> list[tuple[int, dict[str, Any]]]:
    """(first line, row) for every CSV row, as `csv.DictReader` gives them (extra values under
    ``None``, missing ones ``None``); blank lines are skipped and not counted as a row's start;
    a row swallowing later ones is warned about."""
    rows = []
    with _opened(source) as handle:
        reader = csv.reader(handle)
        end = 0  # the last line of the last row read (blank lines included)
        try:
            columns = next(reader, [])
            end = reader.line_num
            twice = sorted({name for name in columns if name and columns.count(name) > 1})
            if twice:  # which of the values would count is anyone's guess
                raise CatalogError(
                    f"{source}, line {end}: the header names the column(s) {', '.join(map(repr, twice))} "
                    "more than once; give each column once."
                )
            for values in reader:
                start, end = end + 1, reader.line_num
                if not values:
                    continue
                row: dict[Any, Any] = dict(zip(columns, values))
                if len(values) > len(columns):
                    row[None] = values[len(columns) :]
                for name in columns[len(values) :]:
                    row[name] = None
                if end > start:
                    _warn_swallowed_rows(source, start, end, row, columns)
                rows.append((start, row))
        except csv.Error as exc:
            hint = (
                " (a value over 128 kB, or a quote that is never closed?)"
                if "larger than" in str(exc)
                else ""
            )
            raise CatalogError(f"{source}, line {end + 1}: {exc}{hint}.") from exc
    return rows


@contextlib.contextmanager
def _opened(source: Path) -> Iterator[TextIO]:
    """The CSV file as text; read errors (I/O, not UTF-8) become one `CatalogError`."""
    try:
        with source.open(newline="", encoding="utf-8-sig") as handle:
            _check_size(source, os.fstat(handle.fileno()).st_size)
            yield handle
    except (OSError, UnicodeDecodeError) as exc:
        raise CatalogError(f"cannot read {source} (give UTF-8 text): {exc}") from exc


def _warn_swallowed_rows(
    source: Path, start: int, end: int, row: dict[str, Any], columns: Sequence[str]
) -> None:
    """A quoted value running over several lines, where those lines look like rows of their own:
    almost always a quote that is never closed, so every row up to the next quote is lost."""
    if len(columns) < 2:
        return
    for value in row.values():
        if not isinstance(value, str) or "\n" not in value:
            continue
        later = value.splitlines()[1:]
        if any(line.count(",") >= len(columns) - 1 for line in later):
            log.warning(
                "%s, line %d: a quoted value runs on to line %d, taking the %d lines after it as "
                "text instead of rows; check that line for a quote that is never closed",
                source, start, end, end - start,
            )  # fmt: skip
            return


def _warn_duplicates(
    source: Path, rows: list[tuple[int, dict[str, Any]]], key_column: str, repeated: list[str]
) -> None:
    """One warning for the file: how many keys repeat, and the lines of the first few."""
    keys = list(dict.fromkeys(repeated))
    examples = "; ".join(
        f"{key!r} on lines {', '.join(str(line) for line, row in rows if str(row.get(key_column)) == key)}"
        for key in keys[:DUPLICATE_EXAMPLES]
    )
    log.warning(
        "%s: %d key(s) appear on more than one row, and the last row wins (%s)", source, len(keys), examples
    )
