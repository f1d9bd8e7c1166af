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


_KEYS = (str, int, float, bool, type(None))  # what json.dumps turns into a field name


class NotFiniteError(ValueError):
    """A JSON number that is not finite (or an integer out of SQLite's range)."""


class TooDeepError(ValueError):
    """JSON nested deeper than `MAX_DEPTH`."""


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
    """``ValueError`` when brackets nest deeper than ``limit`` (strings are skipped), so that a
    recursive parser never meets a hostile depth."""
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
                raise TooDeepError(f"nested deeper than {limit} levels")
        elif char in "]}":
            depth -= 1


def problem(value: Any, depth: int = 0) -> str | None:
    """Why ``value`` cannot be stored as metadata JSON, or None when it can."""
    if depth > MAX_DEPTH:
        return f"nested deeper than {MAX_DEPTH} levels"
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return None
    if isinstance(value, int):
        return None if -INT_RANGE <= value < INT_RANGE else f"{value} is outside the 64-bit integer range"
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{value} is not a finite number"
    if isinstance(value, Mapping):
        for name, inner in value.items():
            if not isinstance(name, _KEYS):
                return f"the field name {name!r} is not text"
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
    for name, value in metadata.items():
        if not isinstance(name, _KEYS):
            return str(name), "the field name is not text"
        if (reason := problem(value, 1)) is not None:
            return name, reason
    return None


def dumps_metadata(metadata: Mapping[str, Any]) -> str:
    """Metadata as the JSON text the catalog stores (sorted keys, UTF-8 kept); the caller has
    checked it with `bad_field`."""
    return json.dumps(dict(metadata), sort_keys=True, ensure_ascii=False, allow_nan=False)
