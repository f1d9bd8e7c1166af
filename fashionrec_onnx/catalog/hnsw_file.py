"""The hnswlib 0.8 index file: its header, the length it implies, and a loader at memory speed.

hnswlib's own ``load_index`` checks the file by walking it with two ``tellg`` calls per element:
two million ``lseek`` system calls for a million items, about 40% of a 2 s open (perf, 1,000,000
items of 256 dimensions). :func:`load` maps the file instead, finds the link lists with numpy and
hands hnswlib the state its pickle support takes (``Index.__setstate__``, called directly: no
pickle is involved), after checking every size and offset hnswlib would copy by. A file written
short, or whose sizes and offsets disagree, is a :class:`GraphFileError`; like ``load_index``, it
does not check the neighbour ids inside the link lists (damage there can crash a search: the
sampled checksum at open and `verify`'s full one are what catch it). An hnswlib whose state has
another shape is loaded by its own ``load_index``.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import struct
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hnswlib
import numpy as np

log = logging.getLogger(__name__)

HEADER = struct.Struct("<QQQQQQiIQQQdQ")  # what hnswlib 0.8's saveIndex writes first
_STATE_VERSION = 1  # the ser_version of hnswlib 0.8's pickle state, whose keys _state fills
_WORD = 4  # link lists are counted in 4-byte words (tableint and linklistsizeint)
_NO_ELEMENT = 2**32 - 1  # an empty index's entry point; internal ids are 32-bit
_SEED = 1  # load_index leaves hnswlib's level generator default-seeded: 1


class GraphFileError(ValueError):
    """The file is not a whole hnswlib index (written short, or damaged)."""


@dataclass(frozen=True)
class Header:
    offset_level0: int
    max_elements: int
    count: int
    size_data_per_element: int
    label_offset: int
    offset_data: int
    max_level: int
    enterpoint_node: int
    max_M: int
    max_M0: int
    M: int
    mult: float
    ef_construction: int

    @classmethod
    def of(cls, buffer: bytes | mmap.mmap) -> Header:
        if len(buffer) < HEADER.size:
            raise GraphFileError(f"the file holds {len(buffer)} bytes, less than hnswlib's header")
        return cls(*HEADER.unpack_from(buffer, 0))

    @property
    def level0_end(self) -> int:
        """Where the per-element block ends and the upper-level link lists begin."""
        return HEADER.size + self.count * self.size_data_per_element

    @property
    def words_per_level(self) -> int:
        return self.max_M + 1  # a count, then max_M neighbours


@dataclass(frozen=True)
class LinkLists:
    """Where the upper-level links of each element above level 0 are, in words of the file's tail."""

    elements: np.ndarray
    starts: np.ndarray
    lengths: np.ndarray
    end: int  # the word where the tail ends: past the file's end when it was written short


def walk(tail: np.ndarray, count: int) -> LinkLists:
    """Follow the tail's ``[size][links]`` records of ``count`` elements.

    Most elements live on level 0 only and have a zero size, so the walk jumps from one non-zero
    word to the next (found for every word at once) instead of stepping through a million records.
    """
    words = len(tail)
    marks = np.where(tail != 0, np.arange(words), words)
    following = np.ascontiguousarray(np.minimum.accumulate(marks[::-1])[::-1]).data  # next non-zero word
    sizes = np.ascontiguousarray(tail).data
    elements: list[int] = []
    starts: list[int] = []
    lengths: list[int] = []
    position = element = 0
    while element < count:
        upcoming = following[position] if position < words else words
        if upcoming == words or element + upcoming - position >= count:
            position += count - element  # the rest are level-0 elements (past a short tail's end)
            break
        element += upcoming - position
        position = upcoming
        size = sizes[position]
        if size % _WORD:
            raise GraphFileError(f"element {element}'s link list has {size} bytes, not whole words")
        length = size // _WORD
        elements.append(element)
        starts.append(position + 1)
        lengths.append(length)
        position += 1 + length
        element += 1
    return LinkLists(
        np.asarray(elements, np.int64), np.asarray(starts, np.int64), np.asarray(lengths, np.int64), position
    )


def _words(buffer: bytes | mmap.mmap, start: int) -> np.ndarray:
    """The whole 4-byte words of ``buffer`` from ``start`` on."""
    available = max(0, len(buffer) - start) // _WORD
    return np.frombuffer(buffer, np.uint32, available, start) if available else np.zeros(0, np.uint32)


def expected_size(path: Path) -> int:
    """The length the header and the link-list sizes imply; a short write falls short of it."""
    with path.open("rb") as handle:
        try:
            header = Header.of(handle.read(HEADER.size))
        except GraphFileError:
            return HEADER.size
        handle.seek(header.level0_end)
        tail = _words(handle.read(), 0)
    try:
        links = walk(tail, header.count)
    except GraphFileError:
        return header.level0_end + _WORD * header.count + 1  # a length no file of whole words has
    return header.level0_end + _WORD * links.end


def load(path: Path, dim: int) -> hnswlib.Index:
    """The index saved at ``path`` (space 'l2', ``dim`` dimensions), deleted items still marked."""
    blank = hnswlib.Index(space="l2", dim=dim)
    base: dict[str, Any] = blank.__getstate__()[0]
    if base.get("ser_version") == _STATE_VERSION:
        index = _from_state(path, dim, base)
        if index is not None:
            return index
    else:
        log.debug("hnswlib's state version is %s: loading %s with load_index", base.get("ser_version"), path)
    blank.load_index(str(path), allow_replace_deleted=True)
    return blank


def _from_state(path: Path, dim: int, base: dict[str, Any]) -> hnswlib.Index | None:
    """The index built from the state read off the mapped file; None when hnswlib refuses it."""
    with path.open("rb") as handle:
        length = os.fstat(handle.fileno()).st_size
        if length < HEADER.size:  # mmap refuses an empty file
            raise GraphFileError(f"the file holds {length} bytes, less than hnswlib's header")
        mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        try:
            state = _state(mapped, dim, base)
        except (GraphFileError, MemoryError, ValueError) as exc:
            traceback.clear_frames(exc.__traceback__)  # their views of the mapping, so that it closes
            if isinstance(exc, GraphFileError):
                raise
            raise GraphFileError(f"its header asks for what no index of this file needs ({exc})") from None
        index = hnswlib.Index.__new__(hnswlib.Index)
        try:
            index.__setstate__((state,))  # hnswlib copies what it keeps
        except Exception as exc:  # an hnswlib whose state has other keys: its own loader reads the file
            log.debug("hnswlib refused the state read from %s (%s); loading it with load_index", path, exc)
            return None
        finally:
            del state
        return index
    finally:
        with contextlib.suppress(BufferError):  # a view still held elsewhere: unmapped with it
            mapped.close()


def _state(mapped: mmap.mmap, dim: int, base: dict[str, Any]) -> dict[str, Any]:
    header = Header.of(mapped)
    _check(header, dim, len(mapped))
    tail = _words(mapped, header.level0_end)
    links = walk(tail, header.count)
    if links.end != len(tail) or len(mapped) != header.level0_end + _WORD * len(tail):
        raise GraphFileError(
            f"the file holds {len(mapped)} bytes, its header and link lists say "
            f"{header.level0_end + _WORD * links.end}"
        )
    levels = np.zeros(header.max_elements, np.int32)
    if len(links.elements):
        levels_found, partial = np.divmod(links.lengths, header.words_per_level)
        if partial.any() or levels_found.min() < 1 or levels_found.max() > header.max_level:
            raise GraphFileError("a link list's length is not a whole number of levels up to the top level")
        levels[links.elements] = levels_found
    # Every upper-level list, in element order, gathered in one fancy index.
    offsets = np.repeat(links.starts - np.cumsum(links.lengths) + links.lengths, links.lengths)
    words = tail[offsets + np.arange(len(offsets))]
    level0 = np.frombuffer(mapped, np.int8, header.count * header.size_data_per_element, HEADER.size)
    labels = np.zeros(0, np.uint64)
    if header.count:  # each element's label sits at label_offset within its level-0 block
        start, stride = HEADER.size + header.label_offset, header.size_data_per_element
        labels = np.ndarray((header.count,), np.uint64, mapped, start, (stride,))
    return {
        **base,
        "seed": _SEED,
        "index_inited": True,
        "offset_level0": header.offset_level0,
        "max_elements": header.max_elements,
        "cur_element_count": header.count,
        "size_data_per_element": header.size_data_per_element,
        "label_offset": header.label_offset,
        "offset_data": header.offset_data,
        "max_level": header.max_level,
        "enterpoint_node": header.enterpoint_node,
        "max_M": header.max_M,
        "max_M0": header.max_M0,
        "M": header.M,
        "mult": header.mult,
        "ef_construction": header.ef_construction,
        "has_deletions": True,  # hnswlib then counts the marked ones, as load_index does
        "size_links_per_element": header.words_per_level * _WORD,
        "allow_replace_deleted": True,
        # A label on two slots (deleted, then added again into another slot) is the last slot's,
        # as in load_index; hnswlib's state loader keeps the first it meets, hence the reversal.
        "label_lookup_external": labels[::-1].copy(),
        "label_lookup_internal": np.arange(header.count, dtype=np.uint32)[::-1].copy(),
        "element_levels": levels,
        "data_level0": level0,
        "link_lists": words.view(np.int8),
    }


def _check(header: Header, dim: int, length: int) -> None:
    """What hnswlib's state loader takes on trust: sizes and offsets that match ``dim`` and M."""
    links0 = (header.max_M0 + 1) * _WORD
    expected = {
        "offset_level0": (header.offset_level0, 0),
        "offset_data": (header.offset_data, links0),
        "label_offset": (header.label_offset, links0 + dim * 4),
        "size_data_per_element": (header.size_data_per_element, links0 + dim * 4 + 8),
        "max_M": (header.max_M, header.M),
        "max_M0": (header.max_M0, 2 * header.M),
    }
    for name, (found, wanted) in expected.items():
        if found != wanted:
            raise GraphFileError(f"its header's {name} is {found}, a {dim}-d index has {wanted}")
    if (
        not 2 <= header.M <= 10_000
        or header.count > header.max_elements
        or header.max_level < (0 if header.count else -1)
    ):
        raise GraphFileError(
            f"its header is not an index's (M {header.M}, {header.count} of {header.max_elements})"
        )
    if header.max_elements > _NO_ELEMENT:
        raise GraphFileError(f"its header's capacity {header.max_elements} exceeds 32-bit element ids")
    if not header.count and (header.max_level, header.enterpoint_node) != (-1, _NO_ELEMENT):
        raise GraphFileError("its header has no element but a top level or an entry point")
    if header.count and header.enterpoint_node >= header.count:
        raise GraphFileError(
            f"its entry point {header.enterpoint_node} is not one of its {header.count} elements"
        )
    if header.level0_end > length:
        raise GraphFileError(
            f"the file holds {length} bytes, its {header.count} elements need {header.level0_end}"
        )
