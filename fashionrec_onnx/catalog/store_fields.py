"""Metadata fields read in SQL: a field's values by label through SQLite's JSON functions (its
JSON path, or ``json_each`` for a name the path syntax cannot spell), with rows SQLite cannot
parse as JSON (a NaN stored by an old version) read in Python, so filters see every item."""

from __future__ import annotations

import json
from typing import Any

from ..json_values import loads_stored

VALID_OR_EMPTY = "CASE WHEN json_valid(items.metadata) THEN items.metadata ELSE '{}' END"


def unspellable(field: str) -> bool:
    """A field name SQLite's JSON path syntax cannot spell exactly (quotes, backslashes, control
    characters): it is matched by ``json_each`` on the key instead."""
    return any(char in '"\\' or char < " " for char in field)


def field_sql(field: str, where: str) -> str:
    """``(label, value, type, stored text)`` of one field (``?1``: its path, or its name for
    `unspellable` ones); rows SQLite cannot read as JSON come back with their text, type 'invalid'."""
    if unspellable(field):
        readable = (
            "SELECT items.label, j.value, j.type, NULL FROM items, "
            f"json_each({VALID_OR_EMPTY}) AS j WHERE {where} AND j.key = ?1"
        )
    else:
        readable = (
            "SELECT label, json_extract(metadata, ?1), json_type(metadata, ?1), NULL FROM items "
            f"WHERE {where} AND CASE WHEN json_valid(metadata) THEN json_type(metadata, ?1) IS NOT NULL END"
        )
    unreadable = (
        f"SELECT label, NULL, 'invalid', metadata FROM items WHERE {where} AND NOT json_valid(metadata)"
    )
    return f"{readable} UNION ALL {unreadable}"


def field_texts(field: str, rows: list[tuple[Any, ...]]) -> list[tuple[int, str]]:
    """``(label, value as text)`` from the rows of `field_sql`, unreadable ones parsed here."""
    values = []
    for label, value, kind, stored in rows:
        if kind != "invalid":
            values.append((label, _python_text(value, kind)))
            continue
        fields = stored_fields(stored)
        if field in fields:
            found = fields[field]
            values.append((label, "True" if found is True else "False" if found is False else str(found)))
    return values


def stored_fields(text: str) -> dict[str, Any]:
    try:
        values = loads_stored(text)
    except (ValueError, RecursionError):
        return {}
    return values if isinstance(values, dict) else {}


def json_path(field: str) -> str:
    return '$."' + field.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _python_text(value: Any, kind: str) -> str:
    """A metadata value as `str()` of the value json.loads would give (filters compare text)."""
    if kind == "true":
        return "True"
    if kind == "false":
        return "False"
    if kind in ("object", "array"):
        return str(json.loads(value))
    if kind == "null":
        return "None"
    return str(value)
