"""Which metadata row belongs to which image, and a report of the rows that found none or many.

A row names one image. Its key is compared with the image's path relative to the indexed folder,
then its file name, then its file name without extension; the first that exists wins. A row that
would fit several images (keyed ``front`` with a ``front.jpg`` in every product folder) is not
given to any of them: it is reported as ambiguous, never silently copied. Rows that fit no image
are reported too, with their line, so a metadata file keyed the wrong way (one row per product
folder, not per image) is never taken for "no metadata" without a word.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from ..catalog.reports import RULE as RULE
from ..catalog.reports import AmbiguousRow as AmbiguousRow
from ..catalog.reports import MetadataMatch as MetadataMatch
from ..catalog.reports import Row as Row

SAMPLE = 5  # rows listed per kind of problem; the rest are counted


class MetadataTable(Mapping[str, dict[str, Any]]):
    """Metadata by row key, remembering the line each row came from (for reports)."""

    def __init__(
        self,
        values: Mapping[str, Mapping[str, Any]],
        *,
        lines: Mapping[str, int] | None = None,
        key_column: str | None = None,
        source: str | None = None,
    ) -> None:
        self._values = {str(key): dict(row) for key, row in values.items()}
        self.lines = dict(lines or {})
        self.key_column = key_column
        self.source = source

    @classmethod
    def of(cls, metadata: Mapping[str, Mapping[str, Any]]) -> MetadataTable:
        return metadata if isinstance(metadata, MetadataTable) else cls(metadata)

    def __getitem__(self, key: str) -> dict[str, Any]:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


def row_key(relative: str, table: Mapping[str, Any]) -> str | None:
    """The key of the row for an image, by the rule (see `RULE`)."""
    if relative in table:
        return relative
    name = relative.rsplit("/", 1)[-1]
    if name in table:
        return name
    stem = name.rsplit(".", 1)[0]
    return stem if stem in table else None


def match_metadata(
    metadata: Mapping[str, Mapping[str, Any]], relatives: Iterable[str]
) -> tuple[dict[str, dict[str, Any]], MetadataMatch]:
    """Metadata by relative path for the images a row fits alone, and the report."""
    table = MetadataTable.of(metadata)
    relatives = list(relatives)
    fitted: dict[str, list[str]] = {}
    for relative in relatives:
        key = row_key(relative, table)
        if key is not None:
            fitted.setdefault(key, []).append(relative)
    values = {images[0]: table[key] for key, images in fitted.items() if len(images) == 1}
    unmatched = [key for key in table if key not in fitted]
    ambiguous = [(key, images) for key, images in fitted.items() if len(images) > 1]
    report = MetadataMatch(
        source=table.source,
        key_column=table.key_column,
        rows=len(table),
        matched_rows=len(fitted) - len(ambiguous),
        images=len(relatives),
        images_without_row=len(relatives) - len(values),
        unmatched=[Row(table.lines.get(key), key) for key in unmatched[:SAMPLE]],
        unmatched_count=len(unmatched),
        ambiguous=[
            AmbiguousRow(Row(table.lines.get(key), key), tuple(images[:3]), len(images))
            for key, images in ambiguous[:SAMPLE]
        ],
        ambiguous_count=len(ambiguous),
        image_examples=relatives[:3],
    )
    if report.rows and report.matched_rows == 0:
        report.hint = _hint(unmatched, relatives)
    return values, report


def _hint(unmatched: list[str], relatives: list[str]) -> str | None:
    """What the keys seem to be instead: the usual one is a row per product folder."""
    folders = {relative.rsplit("/", 1)[0] for relative in relatives if "/" in relative}
    named = [key for key in unmatched if key.rstrip("/") in folders]
    if named:
        example = next(r for r in relatives if r.startswith(named[0].rstrip("/") + "/"))
        keys = "row key names a folder" if len(named) == 1 else "row keys name folders"
        return (
            f"{len(named)} {keys} ({named[0]!r}), not images: give each image its own "
            f"row keyed by its relative path ({example!r}), for example with a column for the folder "
            "(a product id) repeated on each of its images"
        )
    return None
