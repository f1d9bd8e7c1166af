"""Hostile query input and poisoned catalogs through `fashionrec serve` over real HTTP (issue 25):
a 4xx that says what is wrong, never a 500 and never "corrupt"."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from test_service import assert_error, served

from fashionrec_onnx import Catalog

DIM = 2048


@pytest.fixture(scope="module")
def catalog_dir(tmp_path_factory: pytest.TempPathFactory, small_model: Path) -> Path:
    """30 items from vectors; item-03 holds the NaN an older version stored for a feed's value."""
    root = tmp_path_factory.mktemp("poisoned") / "catalog"
    vectors = np.random.default_rng(0).normal(size=(30, DIM))
    with Catalog.create(root, small_model) as catalog:
        catalog.add_many(
            [f"item-{n:02d}" for n in range(30)],
            (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32),
            metadata=[{"category": "Bag" if n % 2 else "Dress"} for n in range(30)],
        )
    with sqlite3.connect(root / "catalog.sqlite") as db:
        nan = '{"category": "Bag", "price": NaN}'
        db.execute("UPDATE items SET metadata = ? WHERE key = 'item-03'", (nan,))
    return root


@pytest.fixture(scope="module")
def http(catalog_dir: Path) -> Iterator[httpx.Client]:
    with served(catalog_dir) as url, httpx.Client(base_url=url, timeout=60) as client:
        yield client


def form(http: httpx.Client, **fields: str) -> httpx.Response:
    """A multipart search with these fields (the image is never read: the fields are refused first)."""
    files = {name: (None, value) for name, value in fields.items()}
    return http.post("/search", files={"image": ("p.png", b"not read", "image/png"), **files})


def test_a_catalog_holding_a_nan_metadata_value_is_served(http: httpx.Client) -> None:
    answer = http.post("/search", json={"key": "item-01", "k": 20, "filter": {"category": "Bag"}})
    assert answer.status_code == 200, answer.text
    assert "item-03" in [hit["key"] for hit in answer.json()["hits"]]
    item = http.get("/items/item-03")
    assert item.status_code == 200 and item.json()["metadata"] == {"category": "Bag", "price": None}


@pytest.mark.parametrize("field", ["filter", "negative"])
def test_deeply_nested_json_in_a_form_field_is_a_clear_422(http: httpx.Client, field: str) -> None:
    # 20,000 levels: 40 kB, under the bound on a form field (64 kB; a larger field is refused for its size)
    body = assert_error(form(http, **{field: "[" * 20_000 + "]" * 20_000}), 422, "bad_parameter")
    assert field in body["detail"] and "levels" in body["detail"]


def test_deeply_nested_json_in_a_json_body_is_a_clear_422(http: httpx.Client) -> None:
    nested = '{"key": "item-01", "filter": {"a": ' + "[" * 100_000 + "]" * 100_000 + "}}"
    response = http.post("/search", content=nested, headers={"Content-Type": "application/json"})
    assert 400 <= response.status_code < 500 and "Traceback" not in response.text


def test_a_nul_in_a_filter_field_name_is_a_bad_parameter_not_corruption(http: httpx.Client) -> None:
    by_json = http.post("/search", json={"key": "item-01", "filter": {"cat\u0000egory": "Bag"}})
    by_form = form(http, filter=json.dumps({"cat\u0000egory": "Bag"}))
    for response in (by_json, by_form):
        body = assert_error(response, 422, "bad_parameter")
        assert "NUL" in body["detail"] and "corrupt" not in response.text
    assert http.post("/search", json={"key": "item-01", "k": 3}).status_code == 200  # and it still serves
