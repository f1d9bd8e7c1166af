"""A shop's product feed: CSV (header row) or JSON lines, one row per image.

Each row names its product (the product column, default ``product_id``) and its image (the image
column, default ``image``: a path, relative to the images root or the feed's folder, or an http(s)
URL); every other column is metadata. The product id is kept as text in the metadata field named
like its column. A row without image or product id (or with one that is not text or a finite
number: NaN, a list), a value that cannot be stored, a JSON line that cannot be read, or a row
repeating an image given on an earlier row, is a `BadRow`; reading goes on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CatalogError
from ..json_values import bad_field
from .scan import _read_csv, _read_json_lines, cell_text, check_table_file

JSON_SUFFIXES = (".jsonl", ".ndjson", ".json")


@dataclass(frozen=True)
class FeedRow:
    """One image of a product: ``image`` as written in the feed, ``fields`` its metadata (the
    product id included)."""

    line: int
    image: str
    product: str
    fields: dict[str, Any]


@dataclass(frozen=True)
class BadRow:
    """A row that cannot be synced, and why; ``image`` when the row named one. ``unreadable``: the
    line, or its image value, could not be read, so which image it names is unknown."""

    line: int
    image: str | None
    reason: str
    unreadable: bool = False


@dataclass
class Feed:
    path: Path
    product_column: str
    image_column: str
    rows: list[FeedRow] = field(default_factory=list)
    bad: list[BadRow] = field(default_factory=list)


def _control(text: str) -> str | None:
    """The first control character of ``text`` as an escape (NUL: ``\\x00``), or None: no file
    name, URL or key in a feed needs one, and a NUL cannot even reach the file system."""
    for char in text:
        if char < " " or char == "\x7f":
            return repr(char)[1:-1]
    return None


def read_feed(
    path: str | os.PathLike[str], *, product_column: str = "product_id", image_column: str = "image"
) -> Feed:
    """Read and check a feed; a missing file or column is a `CatalogError` saying what to pass."""
    source = Path(path).expanduser()
    check_table_file(source, "feed")
    unreadable: list[tuple[int, str]] = []
    if source.suffix.lower() in JSON_SUFFIXES:
        rows = _read_json_lines(source, unreadable)
    else:
        rows = _read_csv(source)
    if not rows and unreadable:
        line, reason = unreadable[0]
        raise CatalogError(f"feed {source}: no line can be read (line {line}: {reason}); nothing was done.")
    if not rows:
        raise CatalogError(
            f"feed {source} has no rows; a sync would remove every item it added before. "
            "Check the file (to empty the catalog, remove its items with `fashionrec remove`)."
        )
    columns = {name for _, row in rows for name in row if name is not None}
    for column, option in ((product_column, "--product-column"), (image_column, "--image-column")):
        if column not in columns:
            raise CatalogError(
                f"feed {source} has no {column!r} column (it has {', '.join(sorted(map(repr, columns)))}); "
                f"name the right one with {option}."
            )
    feed = Feed(source, product_column, image_column)
    feed.bad.extend(BadRow(line, None, reason, unreadable=True) for line, reason in unreadable)
    first_line: dict[str, int] = {}
    for line, row in rows:
        try:
            image = cell_text(row.get(image_column))
        except ValueError as exc:
            feed.bad.append(BadRow(line, None, f"the {image_column!r} value: {exc}", unreadable=True))
            continue
        try:
            product = cell_text(row.get(product_column))
        except ValueError as exc:
            feed.bad.append(BadRow(line, image, f"the {product_column!r} value: {exc}"))
            continue
        if not image:
            feed.bad.append(BadRow(line, None, f"no {image_column!r} value"))
            continue
        if image in first_line:
            feed.bad.append(
                BadRow(line, image, f"the same image as line {first_line[image]}; give each image once")
            )
            continue
        first_line[image] = line
        if not product:
            feed.bad.append(BadRow(line, image, f"no {product_column!r} value"))
            continue
        control = _control(image) or _control(product)
        if control:
            reason = f"a control character ({control}) in the image or product id"
            feed.bad.append(BadRow(line, image, reason))
            continue
        fields = {
            name: value
            for name, value in row.items()
            if name is not None and name != image_column and value is not None
        }
        fields[product_column] = product
        bad = bad_field(fields)
        if bad is not None:
            feed.bad.append(BadRow(line, image, f"field {bad[0]!r}: {bad[1]}"))
            continue
        feed.rows.append(FeedRow(line, image, product, fields))
    return feed
