"""hnswlib's index file read by our loader: the same index as hnswlib's own ``load_index``, and a
clear error (never a crash) for a file written short or damaged."""

from __future__ import annotations

import struct
from pathlib import Path

import hnswlib
import numpy as np
import pytest

from fashionrec_onnx.catalog import hnsw_file
from fashionrec_onnx.catalog.hnsw_file import HEADER, GraphFileError

DIM = 12


def _saved(
    tmp_path: Path, count: int, *, M: int = 4, capacity: int | None = None, churn: bool = False
) -> Path:
    rng = np.random.default_rng(count)
    index = hnswlib.Index(space="l2", dim=DIM)
    index.init_index(
        max_elements=capacity or max(count, 1), M=M, ef_construction=40, allow_replace_deleted=True
    )
    if count:
        index.add_items(rng.standard_normal((count, DIM)).astype(np.float32), np.arange(count) * 7 + 3)
    if churn:  # deleted items, new ones in the slots of some, and deleted labels added again
        deleted = list(range(3, count * 7, 35))
        for label in deleted:
            index.mark_deleted(label)
        fresh = count // 20
        index.add_items(
            rng.standard_normal((fresh, DIM)).astype(np.float32),
            10**9 + np.arange(fresh),
            replace_deleted=True,
        )
        again = deleted[-5:]  # into other deleted slots: the label is then on two slots, one deleted
        index.add_items(
            rng.standard_normal((len(again), DIM)).astype(np.float32), again, replace_deleted=True
        )
    path = tmp_path / f"graph-{count}-{M}-{churn}.hnsw"
    index.save_index(str(path))
    return path


def _state(index: hnswlib.Index) -> dict:
    state = dict(index.__getstate__()[0])
    state.pop("seed")
    state["label_lookup"] = dict(
        zip(state.pop("label_lookup_external").tolist(), state.pop("label_lookup_internal").tolist())
    )
    return state


def _same(ours: dict, theirs: dict) -> bool:
    return ours.keys() == theirs.keys() and all(
        np.array_equal(np.asarray(ours[k]), np.asarray(theirs[k])) for k in ours
    )


@pytest.mark.parametrize(
    "count, M, capacity, churn",
    [(0, 4, 10, False), (1, 4, 1, False), (3000, 4, 5000, True), (2000, 16, 2000, False)],
)
def test_the_loader_builds_the_index_hnswlib_would(tmp_path, count, M, capacity, churn):
    path = _saved(tmp_path, count, M=M, capacity=capacity, churn=churn)
    theirs = hnswlib.Index(space="l2", dim=DIM)
    theirs.load_index(str(path), allow_replace_deleted=True)
    ours = hnsw_file.load(path, DIM)

    mine, other = _state(ours), _state(theirs)
    if count == 0:  # hnswlib's load_index leaves an empty index no room (our wrapper grows it anyway)
        assert ours.get_max_elements() == capacity and other["max_elements"] == 0
        for key in ("max_elements", "element_levels"):
            mine.pop(key), other.pop(key)
    assert _same(mine, other)
    assert ours.get_current_count() == theirs.get_current_count() == count
    assert hnsw_file.expected_size(path) == path.stat().st_size
    if count > 1:
        queries = np.random.default_rng(1).standard_normal((20, DIM)).astype(np.float32)
        ours.set_ef(64), theirs.set_ef(64)
        for mine, other in zip(ours.knn_query(queries, k=5), theirs.knn_query(queries, k=5)):
            np.testing.assert_array_equal(mine, other)
        if churn:  # a label added again after its deletion is deleted again, as load_index's is
            label = (count * 7 - 4) // 35 * 35 + 3
            ours.mark_deleted(label), theirs.mark_deleted(label)
            for found in (ours.knn_query(queries, k=5)[0], theirs.knn_query(queries, k=5)[0]):
                assert label not in found
        # items added after the load go where load_index's would: the same levels, the same graph
        more = np.random.default_rng(2).standard_normal((50, DIM)).astype(np.float32)
        for index in (ours, theirs):
            index.resize_index(index.get_max_elements() + 50)
            index.add_items(more, 5_000_000 + np.arange(50), num_threads=1)
        assert _same(_state(ours), _state(theirs))
        # and it keeps working as an index: it grows, reuses deleted slots, finds new items
        ours.resize_index(ours.get_max_elements() + 3)
        ours.add_items(queries[:3], [1, 2, 4], replace_deleted=True)
        assert ours.knn_query(queries[:3], k=1)[0][:, 0].tolist() == [1, 2, 4]


def test_a_file_written_short_is_an_error_and_its_expected_length_says_so(tmp_path):
    path = _saved(tmp_path, 3000, churn=True)
    whole = path.read_bytes()
    header = hnsw_file.Header.of(whole)
    for cut in (
        10,
        HEADER.size + 5,
        header.level0_end - 3,
        header.level0_end + 2,
        len(whole) - 4,
        len(whole) - 1,
    ):
        short = tmp_path / f"short-{cut}.hnsw"
        short.write_bytes(whole[:cut])
        assert hnsw_file.expected_size(short) > cut
        with pytest.raises(GraphFileError):
            hnsw_file.load(short, DIM)


def _patched(tmp_path: Path, whole: bytes, offset: int, fmt: str, value: int) -> Path:
    data = bytearray(whole)
    struct.pack_into(fmt, data, offset, value)
    path = tmp_path / f"patched-{offset}-{value}.hnsw"
    path.write_bytes(bytes(data))
    return path


def test_a_damaged_header_or_link_list_is_an_error_not_a_crash(tmp_path):
    path = _saved(tmp_path, 3000, churn=True)
    whole = path.read_bytes()
    header = hnsw_file.Header.of(whole)
    damaged = [
        _patched(tmp_path, whole, 16, "<Q", header.count + 10),  # more elements than the file holds
        _patched(tmp_path, whole, 8, "<Q", header.count - 1),  # fewer slots than elements
        _patched(tmp_path, whole, 24, "<Q", header.size_data_per_element + 4),
        _patched(tmp_path, whole, 52, "<I", header.count + 5),  # entry point outside the index
        _patched(tmp_path, whole, 48, "<i", 0),  # top level 0, yet link lists above it
        _patched(tmp_path, whole, header.level0_end, "<I", 4 * 5 + 2),  # a link list of no whole level
    ]
    # the first element with upper levels, given a list longer than the top level allows
    tail = np.frombuffer(whole, np.uint32, offset=header.level0_end)
    first = int(np.flatnonzero(tail)[0])
    damaged.append(
        _patched(tmp_path, whole, header.level0_end + 4 * first, "<I", 4 * 5 * (header.max_level + 1))
    )
    damaged.append(_patched(tmp_path, whole, 8, "<Q", 2**62))  # a capacity past 32-bit ids
    empty = _saved(tmp_path, 0, capacity=10).read_bytes()
    damaged.append(_patched(tmp_path, empty, 48, "<i", 3))  # no element, yet a top level
    (tmp_path / "nothing.hnsw").write_bytes(b"")
    damaged.append(tmp_path / "nothing.hnsw")
    for broken in damaged:
        with pytest.raises(GraphFileError):
            hnsw_file.load(broken, DIM)
    with pytest.raises(GraphFileError):  # an index of other dimensions
        hnsw_file.load(path, DIM + 1)
