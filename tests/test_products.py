"""Products: searches grouped by product, "more like this" leaving out the whole product, and
queries with several positives and negatives, each held to the exact oracle."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from oracle import assert_same_ranking, catalog_distances
from PIL import Image

from fashionrec_onnx import Catalog
from fashionrec_onnx.catalog.answering import NEGATIVE_WEIGHT
from fashionrec_onnx.errors import BadArgumentError, CatalogError

PRODUCTS = 80
CATEGORIES = ("Dress", "Shirt", "Bag")


def _structured(seed: int = 0, dim: int = 2048) -> tuple[list[str], np.ndarray, list[dict[str, str]]]:
    """Products of 1-4 photos: each photo near its product's centre, centres spread out, so
    neighbours are products' siblings first (the shape of real catalogs, not isotropic noise)."""
    rng = np.random.default_rng(seed)
    keys, vectors, metadata = [], [], []
    base = rng.normal(size=dim)
    for p in range(PRODUCTS):
        centre = base + rng.normal(size=dim) * 0.8
        for photo in range(1 + p % 4):
            keys.append(f"p{p:03d}/photo-{photo}.jpg")
            vectors.append(centre + rng.normal(size=dim) * 0.35)
            metadata.append({"product_id": f"SKU-{p:03d}", "category": CATEGORIES[p % 3]})
    vectors_ = np.asarray(vectors, np.float32)
    return keys, vectors_ / np.linalg.norm(vectors_, axis=1, keepdims=True), metadata


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory, small_model: Path) -> Catalog:
    keys, vectors, metadata = _structured()
    catalog = Catalog.create(tmp_path_factory.mktemp("shop") / "c", small_model, product_field="product_id")
    catalog.add_many(keys, vectors, metadata=metadata)
    return catalog


def _grouped_by_hand(hits: list, k: int) -> list[tuple[str, str]]:
    """An exact search's hits grouped by product: each product's first (best) photo."""
    seen: set[str] = set()
    best = []
    for hit in hits:
        product = hit.metadata["product_id"]
        if product not in seen:
            seen.add(product)
            best.append((product, hit.key))
    return best[:k]


def _queries(catalog: Catalog, n: int = 12) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    keys = catalog.keys()
    mixes = []
    for _ in range(n):
        a, b = rng.choice(len(keys), 2, replace=False)
        mixes.append(catalog.vector(keys[a]) + 0.6 * catalog.vector(keys[b]))
    return mixes


@pytest.mark.parametrize("filter", [None, {"category": ["Dress", "Bag"]}], ids=["no filter", "filter"])
def test_grouped_search_equals_exact_search_then_group_by(shop: Catalog, filter: dict | None) -> None:
    everything = len(shop)
    for query in _queries(shop):
        ranked = shop.exact_search(query, k=everything, filter=filter)
        expected = [key for _, key in _grouped_by_hand(ranked, 5)]
        exact = shop.exact_search(query, k=5, filter=filter, group_by="product")
        graph = shop.search(query, k=5, filter=filter, group_by="product")
        distance = catalog_distances(shop, query)
        assert_same_ranking(exact, expected, distance)
        assert_same_ranking(graph, expected, distance)
        for hits in (exact, graph):
            assert len({h.product for h in hits}) == 5
            assert all(h.product == h.metadata["product_id"] for h in hits)
        assert [h.rank for h in graph] == [1, 2, 3, 4, 5]


def test_a_product_hit_lists_its_other_photos_nearest_first(shop: Catalog) -> None:
    query = _queries(shop)[0]
    for hit in shop.search(query, k=5, group_by="product"):
        siblings = {item.key for item in shop.iter_items() if item.metadata["product_id"] == hit.product}
        assert set(hit.photos) == siblings - {hit.key}
        unit = query / np.linalg.norm(query)
        distances = [float(np.sum((shop.vector(key) - unit) ** 2)) for key in hit.photos]
        assert distances == sorted(distances)
        assert hit.distance <= min(distances, default=hit.distance)


def test_more_like_this_leaves_out_the_whole_product(shop: Catalog) -> None:
    key = "p003/photo-2.jpg"  # product 3 has 4 photos
    for group_by in (None, "product"):
        graph = shop.more_like_this(key, k=10, group_by=group_by)
        exact = shop.exact_search(key, k=10, group_by=group_by)
        assert all(hit.product != "SKU-003" for hit in graph + exact)
        assert_same_ranking(graph, exact)
    everything = shop.exact_search(shop.vector(key), k=len(shop))
    expected = [k for p, k in _grouped_by_hand(everything, 6) if p != "SKU-003"][:5]
    got = shop.more_like_this(key, k=5, group_by="product")
    assert_same_ranking(got, expected, catalog_distances(shop, shop.vector(key)))


def test_the_product_count_counts_distinct_products(shop: Catalog, tmp_path: Path, small_model: Path) -> None:
    assert shop.product_count() == PRODUCTS
    keys, vectors, metadata = _structured()
    catalog = Catalog.create(tmp_path / "c", small_model)
    catalog.add_many(keys[:10], vectors[:10], metadata=metadata[:10])
    assert catalog.product_count() is None
    catalog.set_product_field("product_id")
    assert catalog.product_count() == len({m["product_id"] for m in metadata[:10]})
    catalog.add("lonely", vectors[20])  # no product id: a product of its own
    catalog.remove(keys[0])
    assert catalog.product_count() == len({m["product_id"] for m in metadata[1:10]}) + 1


def test_ungrouped_hits_name_their_product(shop: Catalog) -> None:
    hits = shop.search(_queries(shop)[2], k=8)
    assert all(hit.product == hit.metadata["product_id"] and hit.photos == () for hit in hits)


def test_several_positives_and_negatives_search_the_documented_vector(shop: Catalog) -> None:
    a, b, c = "p010/photo-0.jpg", "p021/photo-1.jpg", "p042/photo-0.jpg"
    va, vb, vc = (shop.vector(x) for x in (a, b, c))
    documented = (va + vb) / 2 - NEGATIVE_WEIGHT * vc
    left_out = {"SKU-010", "SKU-021", "SKU-042"}  # keys are left out with their products
    expected = [h for h in shop.exact_search(documented, k=30) if h.product not in left_out][:5]
    combined = shop.exact_search([a, b], negative=[c], k=5)
    assert_same_ranking(combined, expected)
    np.testing.assert_allclose([h.distance for h in combined], [h.distance for h in expected], atol=1e-5)
    assert_same_ranking(shop.search([a, b], negative=[c], k=5), expected)
    assert_same_ranking(shop.more_like_this([a, b], negative=[c], k=5), expected)


def test_vectors_and_keys_mix_as_queries(shop: Catalog) -> None:
    a, c = "p010/photo-0.jpg", "p042/photo-0.jpg"
    vector = shop.vector("p050/photo-1.jpg")
    documented = (shop.vector(a) + vector) / 2 - NEGATIVE_WEIGHT * shop.vector(c)
    expected = [h for h in shop.exact_search(documented, k=30) if h.product not in {"SKU-010", "SKU-042"}][:5]
    assert_same_ranking(shop.exact_search([a, vector], negative=[c], k=5), expected)


def test_a_single_positive_is_exactly_the_plain_search(shop: Catalog) -> None:
    for query in (_queries(shop)[3], "p007/photo-1.jpg"):
        plain = shop.search(query, k=7)
        assert shop.search([query], k=7) == plain
        assert shop.search((query,), k=7, negative=[]) == plain


def test_queries_that_cancel_out_are_an_error(shop: Catalog) -> None:
    vector = shop.vector("p001/photo-0.jpg")
    with pytest.raises(BadArgumentError, match="cancel out"):
        shop.search([vector, -vector], k=3)


def test_group_by_needs_a_product_field(tmp_path: Path, small_model: Path) -> None:
    keys, vectors, metadata = _structured()
    catalog = Catalog.create(tmp_path / "c", small_model)
    catalog.add_many(keys[:20], vectors[:20], metadata=metadata[:20])
    with pytest.raises(BadArgumentError, match="set_product_field"):
        catalog.search(vectors[0], group_by="product")
    with pytest.raises(BadArgumentError, match="group_by takes"):
        catalog.search(vectors[0], group_by="colour")


def test_the_product_field_is_recorded_changeable_and_seen_by_other_processes(
    tmp_path: Path, small_model: Path
) -> None:
    keys, vectors, metadata = _structured()
    for item, values in zip(metadata, keys):
        item["style"] = values.split("/")[0][:3]  # p00, p01, ...: ten products to a style
    catalog = Catalog.create(tmp_path / "c", small_model)
    catalog.add_many(keys, vectors, metadata=metadata)
    other = Catalog.open(tmp_path / "c", readonly=True)
    assert other.product_field is None
    catalog.set_product_field("style")
    assert other.product_field == "style"
    styles = [h.product for h in other.search(vectors[0], k=8, group_by="product")]
    assert len(set(styles)) == 8 and all(s.startswith("p") for s in styles)
    catalog.close()
    reopened = Catalog.open(tmp_path / "c")
    assert reopened.product_field == "style"
    reopened.set_product_field(None)
    assert reopened.search(vectors[0], k=3)[0].product is None


def test_open_or_create_refuses_a_product_field_the_existing_catalog_does_not_have(
    tmp_path: Path, small_model: Path
) -> None:
    keys, vectors, metadata = _structured()
    with Catalog.create(tmp_path / "c", small_model) as catalog:
        catalog.add_many(keys[:10], vectors[:10], metadata=metadata[:10])
    with pytest.raises(CatalogError, match=r"has no product field.*set_product_field\('product_id'\)"):
        Catalog.open_or_create(tmp_path / "c", small_model, product_field="product_id")
    with Catalog.open(tmp_path / "c") as catalog:
        assert catalog.product_field is None and len(catalog) == 10
        catalog.set_product_field("category")
    with pytest.raises(CatalogError, match="groups photos by the field 'category'"):
        Catalog.open_or_create(tmp_path / "c", small_model, product_field="product_id")
    with Catalog.open_or_create(tmp_path / "c", small_model, product_field="category") as catalog:
        assert catalog.product_field == "category"
    with Catalog.open_or_create(tmp_path / "c", small_model) as catalog:
        assert catalog.product_field == "category"


def test_cli_index_product_field_sets_it_on_an_existing_catalog_and_says_so(
    tmp_path: Path, small_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fashionrec_onnx.cli import main

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(folder / f"{i}.png")
    index = ["index", str(folder), "--catalog", str(tmp_path / "c"), "--model", str(small_model), "--quiet"]
    assert main(index) == 0
    assert main([*index, "--product-field", "sku"]) == 0
    assert "product field is now 'sku' (was None)" in capsys.readouterr().out
    with Catalog.open(tmp_path / "c") as catalog:
        assert catalog.product_field == "sku"


def test_changed_product_ids_regroup_at_once(shop: Catalog, tmp_path: Path, small_model: Path) -> None:
    keys, vectors, metadata = _structured()
    catalog = Catalog.create(tmp_path / "c", small_model, product_field="product_id")
    catalog.add_many(keys, vectors, metadata=metadata)
    query = catalog.vector("p005/photo-0.jpg")
    before = catalog.search(query, k=3, group_by="product")
    assert before[0].product == "SKU-005" and before[0].photos == ("p005/photo-1.jpg",)
    changed = catalog.update_metadata({"p005/photo-1.jpg": {"product_id": "SKU-NEW", "category": "Shirt"}})
    assert changed == 1
    after = catalog.search(query, k=3, group_by="product")
    assert after[0].photos == ()
    assert "SKU-NEW" in [h.product for h in after]


def test_cli_searches_several_queries_not_others_grouped(shop: Catalog) -> None:
    a, b, c = "p010/photo-0.jpg", "p021/photo-1.jpg", "p042/photo-0.jpg"
    command = [sys.executable, "-m", "fashionrec_onnx.cli", "search", a, b, "--not", c]
    command += ["--catalog", str(shop.path), "--group-by", "product", "--json", "-k", "4"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    expected = shop.search([a, b], negative=[c], k=4, group_by="product")
    assert [(h["key"], h["product"], h["photos"]) for h in answer] == [
        (h.key, h.product, list(h.photos)) for h in expected
    ]
