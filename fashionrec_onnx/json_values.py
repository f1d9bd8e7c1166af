"""The one rule for metadata values, whatever the door (feeds, metadata files, Parquet, the API):
JSON that SQLite's JSON functions can read. Python's json accepts ``NaN``, ``Infinity`` and
numbers like ``1e999`` (read as infinity); SQLite refuses the whole row afterwards, so such values
are refused here, with the field named, before anything is written. Values already stored by an
older version are read back as ``None`` (and `Catalog.verify` names their items).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

MAX_DEPTH = 32  # nesting of objects and lists in one metadata value or query field
INT_RANGE = 2**63  # SQLite stores integers as 64-bit; a larger one would become an inexact real
INT_DIGITS = 19  # digits of the largest 64-bit integer: a JSON integer with more is out of range
READ_DEPTH = 100  # nesting a row reader parses (well within Python's recursion limit) to name the
# field that is too deep; deeper, the row cannot be read at all


_KEYS = (str,)  # field names are text (json.dumps would turn others into text, or fail sorting a mix)


class DepthError(ValueError):
    """JSON nested deeper than `MAX_DEPTH` (refused before Python's recursive parser sees it)."""


class NotFiniteError(ValueError):
    """A JSON number that is not finite (or an integer out of SQLite's range)."""


def _refuse_constant(name: str) -> float:
    raise NotFiniteError(f"{name} is not a finite number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise NotFiniteError(f"{text[:40]} is too large for a finite number")
    return value


def loads_finite(text: str) -> Any:
    """``json.loads`` that refuses NaN, Infinity and numbers that overflow (`NotFiniteError`) and
    nesting deeper than `MAX_DEPTH` (``ValueError``), before Python's parser could recurse."""
    check_depth(text)
    return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)


class Refused:
    """A value read from a row that cannot be stored (an integer too long to convert: Python
    refuses over 4,300 digits), kept in place so the row's error names its field instead of the
    whole file failing to parse."""

    def __init__(self, reason: str, text: str = "") -> None:
        self.reason = reason
        self.text = text  # as written (an id may be any integer: it is kept as text)

    def __repr__(self) -> str:
        return f"<refused: {self.reason}>"


def _bounded_int(text: str) -> int | Refused:
    digits = len(text.lstrip("-"))
    if digits > INT_DIGITS:  # JSON has no leading zeros: more digits than 2**63 has is out of range
        return Refused(f"an integer of {digits:,} digits is outside the 64-bit integer range", text)
    return int(text)


def loads_row(text: str) -> Any:
    """One row of a feed, metadata file or Parquet metadata column: ``json.loads`` that cannot be
    made to fail by a value (a NaN, ``1e999``, an integer of 5,000 digits, nesting deeper than
    `MAX_DEPTH`), so that value fails its row, named by `problem`, and the other rows go through.
    ``ValueError`` only for text that is not JSON, or nested deeper than `READ_DEPTH`."""
    check_depth(text, READ_DEPTH)
    return json.loads(text, strict=False, parse_int=_bounded_int)


def _tolerant_constant(name: str) -> None:
    return None


def _tolerant_float(text: str) -> float | None:
    value = float(text)
    return value if math.isfinite(value) else None


def loads_stored(text: str) -> Any:
    """Stored metadata as Python values; a non-finite number (written before they were refused)
    reads as ``None`` so the item stays usable."""
    return json.loads(text, parse_constant=_tolerant_constant, parse_float=_tolerant_float)


def check_depth(text: str, limit: int = MAX_DEPTH) -> None:
    """`DepthError` (a ``ValueError``) when brackets nest deeper than ``limit`` (strings are
    skipped), so that a recursive parser never meets a hostile depth."""
    if text.count("[") + text.count("{") <= limit:  # too few brackets to nest deeper (most rows)
        return
    depth = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > limit:
                raise DepthError(f"nested deeper than {limit} levels")
        elif char in "]}":
            depth -= 1


NUL_IN_NAME = "a field name cannot hold a NUL character"
LONE_SURROGATE = "the text holds a lone surrogate (a \\ud800-\\udfff escape), which UTF-8 cannot store"


def storable(text: str) -> bool:
    """Whether ``text`` can be stored as UTF-8 (a JSON ``\\ud800`` escape decodes to a string that cannot)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def problem(value: Any, depth: int = 0) -> str | None:
    """Why ``value`` cannot be stored as metadata JSON, or None when it can."""
    if depth > MAX_DEPTH:
        return f"nested deeper than {MAX_DEPTH} levels"
    if isinstance(value, str):
        return None if storable(value) else LONE_SURROGATE
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return None if -INT_RANGE <= value < INT_RANGE else f"{value} is outside the 64-bit integer range"
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{value} is not a finite number"
    if isinstance(value, Refused):
        return value.reason
    if isinstance(value, Mapping):
        if not isinstance(value, dict):
            return f"a {type(value).__name__} is not a JSON object (give a dict)"
        for name, inner in value.items():
            if not isinstance(name, _KEYS):
                return f"the field name {name!r} is not text"
            if not storable(name):
                return f"a field name: {LONE_SURROGATE}"
            if "\x00" in name:
                return NUL_IN_NAME
            if (reason := problem(inner, depth + 1)) is not None:
                return reason
        return None
    if isinstance(value, (list, tuple)):
        for inner in value:
            if (reason := problem(inner, depth + 1)) is not None:
                return reason
        return None
    return f"a {type(value).__name__} is not a JSON value (give text, numbers, booleans, lists or objects)"


def bad_field(metadata: Mapping[str, Any]) -> tuple[str, str] | None:
    """``(field, reason)`` of the first field of ``metadata`` that cannot be stored."""
    if not isinstance(metadata, Mapping):
        return "", f"metadata is a mapping of field names to values, not a {type(metadata).__name__}"
    if _plain(metadata):
        return None
    for name, value in metadata.items():
        if not isinstance(name, _KEYS):
            return str(name), "the field name is not text"
        if not storable(name):
            return name.encode("utf-8", "backslashreplace").decode(), f"the field name: {LONE_SURROGATE}"
        if "\x00" in name:  # SQLite's JSON functions end a name there: the field could not be found
            return name.replace("\x00", "\\x00"), NUL_IN_NAME
        if (reason := problem(value, 1)) is not None:
            return name, reason
    return None


def _plain(metadata: Mapping[str, Any]) -> bool:
    """Whether every name is text without NUL and every value storable, with all the top-level
    text checked by one UTF-8 encode instead of one per string (the common row: a few text
    fields); other values are `problem`'s to judge, as in the field by field walk."""
    texts = []
    for name, value in metadata.items():
        if type(name) is not str or "\x00" in name:
            return False
        texts.append(name)
        if type(value) is str:
            texts.append(value)
        elif problem(value, 1) is not None:
            return False
    return storable("".join(texts))  # a surrogate stays one when joined: UTF-8 refuses it alone


def dumps_metadata(metadata: Mapping[str, Any]) -> str:
    """Metadata as the JSON text the catalog stores (sorted keys, UTF-8 kept); the caller has
    checked it with `bad_field`."""
    return json.dumps(dict(metadata), sort_keys=True, ensure_ascii=False, allow_nan=False)
