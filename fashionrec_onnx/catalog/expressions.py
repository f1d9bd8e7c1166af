"""Metadata filters as Milvus boolean expressions, with every value escaped.

A filter ``{"category": ["Dress", "Bag"]}`` means what it means on a local catalog: an item
passes when, for every field, ``str()`` of its value is one of the texts given. The catalog's own
columns are typed fields (``key``, ``path``); metadata is one JSON field, so a condition reads
``metadata["category"] in ["Dress", "Bag"]``. A text that is also how a number or a boolean prints
(``"3"``, ``"2.5"``, ``"True"``) matches that number or boolean too, as it does locally.

Values are never pasted in raw: the Milvus 2.3 test server refuses expression templates
(``filter_params``), so each string is a double-quoted literal in which backslash, double quote
and every control character are escaped; field names are escaped the same way inside
``metadata["..."]``. Lists of one JSON type only: Milvus cannot mix types in one ``in``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ..errors import BadArgumentError

ANY_OF = (list, tuple, set, frozenset)
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}
MAX_VALUES = 10_000  # one expression must stay a reasonable size for the server's parser


def literal(text: str) -> str:
    """A Milvus string literal holding exactly ``text``."""
    if not isinstance(text, str):
        raise BadArgumentError(f"expected text, got {type(text).__name__}")
    if "\x00" in text:
        raise BadArgumentError("a filter value cannot hold a NUL character")
    out = []
    for char in text:
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\x{ord(char):02x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def strings(values: Iterable[str]) -> str:
    """A Milvus list of string literals."""
    return "[" + ", ".join(literal(v) for v in values) + "]"


def field(name: str) -> str:
    """The JSON path of a metadata field."""
    return f"metadata[{literal(str(name))}]"


def _numbers(texts: list[str]) -> tuple[list[str], list[str]]:
    """Texts that print as an int or a float, as Milvus number literals (checked, not pasted)."""
    ints, floats = [], []
    for text in texts:
        try:
            if str(int(text)) == text:
                ints.append(str(int(text)))
                continue
        except ValueError:
            pass
        try:
            number = float(text)
        except ValueError:
            continue
        if str(number) == text and number == number and abs(number) != float("inf"):
            floats.append(repr(number))
    return ints, floats


def condition(name: str, value: Any) -> str:
    """One field's condition: any of the texts, as a string, number or boolean value."""
    texts = [str(v) for v in value] if isinstance(value, ANY_OF) else [str(value)]
    if not texts:
        return "false"
    if len(texts) > MAX_VALUES:
        raise BadArgumentError(f"a filter on {name!r} lists {len(texts)} values; at most {MAX_VALUES}")
    path = field(name)
    parts = [f"{path} in {strings(texts)}"]
    ints, floats = _numbers(texts)
    if ints:
        parts.append(f"{path} in [{', '.join(ints)}]")
    if floats:
        parts.append(f"{path} in [{', '.join(floats)}]")
    parts += [f"{path} == {text.lower()}" for text in ("True", "False") if text in texts]
    return parts[0] if len(parts) == 1 else "(" + " or ".join(parts) + ")"


def metadata_filter(wanted: Mapping[str, Any]) -> str:
    """Every field's condition, and-ed ('' for no condition)."""
    return " and ".join(f"({condition(str(name), value)})" for name, value in wanted.items())


def keys_in(keys: Iterable[str]) -> str:
    return f"key in {strings(keys)}"


def keys_not_in(keys: Iterable[str]) -> str:
    keys = list(keys)
    return f"not (key in {strings(keys)})" if keys else ""


def both(*expressions: str) -> str:
    """``a and b`` of the non-empty ones."""
    parts = [e for e in expressions if e]
    if len(parts) <= 1:
        return parts[0] if parts else ""
    return " and ".join(f"({e})" for e in parts)
