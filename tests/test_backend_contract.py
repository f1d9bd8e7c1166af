"""The storage seam's contract (`catalog.backend.Backend`): the same behaviour asserted on every
backend, a local directory catalog (`LocalBackend`) and a Milvus collection (`MilvusBackend`, on
the session's real server). Jobs written once above the seam rely on exactly this."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from fashionrec_onnx import Catalog
from fashionrec_onnx.catalog.backend import Backend
from fashionrec_onnx.catalog.local_backend import LocalBackend
from fashionrec_onnx.catalog.remote import RemoteCatalog
from fashionrec_onnx.catalog.store import NewItem
from fashionrec_onnx.errors import BadArgumentError

ODD_VALUES = ['O\'Neil "quoted"', "東京 Ünïcode", "[brackets] and \\ backslash", "a' or '1'='1"]


@pytest.fixture(params=["local", "milvus"])
def opened(
    request: pytest.FixtureRequest, tmp_path: Path, small_model: Path
) -> Iterator[tuple[Backend, int]]:
    """An empty catalog's backend and dimension: a local directory, then a Milvus collection."""
    where = str(tmp_path / "catalog") if request.param == "local" else request.getfixturevalue("milvus_uri")
    catalog = Catalog.create(where, small_model)
    found: Backend = catalog.backend if isinstance(catalog, RemoteCatalog) else LocalBackend.of(catalog)
    yield found, catalog.dim
    catalog.close()


def _unit(dim: int, seed: int) -> np.ndarray:
    vector = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return vector / np.linalg.norm(vector)


def _items(dim: int, keys: list[str], **metadata: str) -> list[NewItem]:
    return [
        NewItem(key, _unit(dim, n), f"/images/{key}.jpg", 100 + n, 10**18 + n, {"n": n, **metadata})
        for n, key in enumerate(keys)
    ]


def test_upsert_by_key_replaces_the_item(opened: tuple[Backend, int]) -> None:
    backend, dim = opened
    backend.write(_items(dim, ["a", "b"]))
    again = NewItem("a", _unit(dim, 99), "/elsewhere/a.png", 7, 8, {"colour": "red"})
    backend.write([again])
    assert backend.count() == 2
    row, vector = backend.fetch(["a"], vectors=True)["a"]
    assert row == {"path": "/elsewhere/a.png", "size": 7, "mtime_ns": 8, "metadata": {"colour": "red"}}
    np.testing.assert_allclose(vector, again.vector, atol=1e-6)
    nearest = backend.top_k(again.vector, 1, None, [], 64)
    assert nearest[0].key == "a" and nearest[0].distance == pytest.approx(0.0, abs=1e-4)


def test_fetch_returns_the_keys_held_only(opened: tuple[Backend, int]) -> None:
    backend, dim = opened
    backend.write(_items(dim, ["a", "b"]))
    found = backend.fetch(["missing", "b", "also missing"])
    assert list(found) == ["b"]
    row, vector = found["b"]
    assert vector is None and row["path"] == "/images/b.jpg" and row["size"] == 101
    assert backend.fetch([]) == {}


def test_removal_sticks(opened: tuple[Backend, int]) -> None:
    backend, dim = opened
    backend.write(_items(dim, ["a", "b", "c"]))
    assert backend.remove(["a", "nothing", "a"]) == ["a"]
    assert backend.remove(["a"]) == []
    assert backend.count() == 2 and backend.fetch(["a"]) == {}
    assert "a" not in {n.key for n in backend.top_k(_unit(dim, 0), 3, None, [], 64)}
    assert "a" not in {key for batch in backend.iterate() for key, _, _ in batch}


def test_filters_with_quotes_brackets_and_unicode_values(opened: tuple[Backend, int]) -> None:
    backend, dim = opened
    items = [
        NewItem(f"k{n}", _unit(dim, n), None, None, None, {"brand": value, "n": n})
        for n, value in enumerate(ODD_VALUES)
    ]
    backend.write(items)
    for n, value in enumerate(ODD_VALUES):
        found = backend.top_k(_unit(dim, 50), 10, {"brand": value}, [], 64)
        assert [hit.key for hit in found] == [f"k{n}"], value
        assert backend.keys_with_field("brand", [value]) == [f"k{n}"]
        assert [key for batch in backend.iterate({"brand": value}) for key, _, _ in batch] == [f"k{n}"]
    either = backend.top_k(_unit(dim, 50), 10, {"brand": ODD_VALUES[:2]}, [], 64)
    assert {hit.key for hit in either} == {"k0", "k1"}
    assert sorted(backend.keys_with_field("brand", ODD_VALUES[2:])) == ["k2", "k3"]
    assert backend.keys_with_field("brand", []) == []
    assert backend.fetch(["k1"])["k1"][0]["metadata"] == {"brand": ODD_VALUES[1], "n": 1}


def test_iterate_gives_every_item_once_in_batches(opened: tuple[Backend, int]) -> None:
    backend, dim = opened
    items = _items(dim, [f"item-{n}" for n in range(7)])
    backend.write(items)
    batches = list(backend.iterate(batch=3))
    assert all(1 <= len(batch) <= 3 for batch in batches)
    seen = [key for batch in batches for key, _, _ in batch]
    assert sorted(seen) == sorted(item.key for item in items)
    with_vectors = {key: vector for batch in backend.iterate(vectors=True) for key, _, vector in batch}
    for item in items:
        np.testing.assert_allclose(with_vectors[item.key], item.vector, atol=1e-6)
    assert all(vector is None for batch in batches for _, _, vector in batch)


def test_top_k_is_nearest_first_and_leaves_out_the_excluded(opened: tuple[Backend, int]) -> None:
    backend, dim = opened
    items = _items(dim, [f"x{n}" for n in range(6)])
    backend.write(items)
    query = items[2].vector
    found = backend.top_k(query, 3, None, [], 64)
    assert found[0].key == "x2"
    distances = [hit.distance for hit in found]
    assert distances == sorted(distances)
    expected = float(np.sum((items[int(found[1].key[1:])].vector - query) ** 2))
    assert found[1].distance == pytest.approx(expected, rel=1e-3)
    without = backend.top_k(query, 3, None, ["x2", "not held"], 64)
    assert "x2" not in {hit.key for hit in without} and len(without) == 3
    filtered = backend.top_k(query, 3, {"n": [2, 3]}, ["x2"], 64)
    assert [hit.key for hit in filtered] == ["x3"]
    many = backend.top_k_many(np.stack([items[0].vector, items[4].vector]), 2, 64)
    assert [hits[0].key for hits in many] == ["x0", "x4"] and all(len(hits) == 2 for hits in many)


def test_feed_owners_are_recorded_and_cleared(opened: tuple[Backend, int]) -> None:
    backend, dim = opened
    backend.write(_items(dim, ["shop/1", "shop/2", "mine/3"]))
    assert backend.feed_owners(["shop/1", "mine/3"]) == {}
    backend.set_feed(["shop/1", "shop/2"], "shop/")
    assert backend.feed_owners(["shop/1", "shop/2", "mine/3", "absent"]) == {
        "shop/1": "shop/",
        "shop/2": "shop/",
    }
    assert sorted(backend.keys_of_feed("shop/")) == ["shop/1", "shop/2"]
    assert backend.keys_of_feed("other/") == []
    backend.set_feed(["shop/2"], None)
    assert backend.feed_owners(["shop/1", "shop/2"]) == {"shop/1": "shop/"}
    backend.set_feed([], "shop/")  # nothing to record: no error


def test_a_write_records_its_feed_and_brings_a_removed_key_back(opened: tuple[Backend, int]) -> None:
    backend, dim = opened
    first = [NewItem("shop/1", _unit(dim, 1), feed="shop/"), NewItem("shop/2", _unit(dim, 2), feed="shop/")]
    backend.write(first)
    assert backend.feed_owners(["shop/1", "shop/2"]) == {"shop/1": "shop/", "shop/2": "shop/"}
    backend.write([NewItem("shop/1", _unit(dim, 3))])  # written again by hand: no feed's
    assert backend.feed_owners(["shop/1", "shop/2"]) == {"shop/2": "shop/"}
    assert backend.remove(["shop/2"]) == ["shop/2"]
    assert backend.feed_owners(["shop/2"]) == {} and backend.keys_of_feed("shop/") == []
    backend.remember_removed(["shop/2"])
    backend.write([NewItem("shop/2", _unit(dim, 2))])
    assert backend.removed_keys() == []


def test_metadata_that_cannot_be_stored_is_refused_before_anything_is(opened: tuple[Backend, int]) -> None:
    backend, dim = opened
    with pytest.raises(BadArgumentError, match="'price'"):
        backend.write(
            [NewItem("ok", _unit(dim, 1)), NewItem("bad", _unit(dim, 2), metadata={"price": float("nan")})]
        )
    assert backend.count() == 0


def test_keys_removed_by_hand_are_remembered_and_forgotten(opened: tuple[Backend, int]) -> None:
    backend, dim = opened
    assert backend.removed_keys() == [] and backend.removed_keys(["x"]) == []
    backend.remember_removed(["gone/1", "gone/2 'quoted'"])
    assert sorted(backend.removed_keys()) == ["gone/1", "gone/2 'quoted'"]
    assert backend.removed_keys(["gone/1", "kept"]) == ["gone/1"]
    backend.forget_removed(["gone/1", "never removed"])
    assert backend.removed_keys() == ["gone/2 'quoted'"]


def test_settings_round_trip(opened: tuple[Backend, int]) -> None:
    backend, dim = opened
    backend.set_settings({"note.x": "välue with 'quotes' and \"more\""})
    assert backend.settings()["note.x"] == "välue with 'quotes' and \"more\""
    backend.set_settings({"note.x": "changed"})
    assert backend.settings()["note.x"] == "changed"
    assert backend.describe()
