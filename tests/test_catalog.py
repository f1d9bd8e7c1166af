"""The catalog: build, search, filters, updates, incremental indexing, persistence, recall, threads."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from oracle import assert_same_ranking, assert_true_top_k, brute_force
from PIL import Image

from fashionrec_onnx import (
    Catalog,
    CatalogCorruptError,
    CatalogError,
    Embedder,
    ModelMismatchError,
)
from fashionrec_onnx.quality.datasets import SAMPLE_DIR, load_split

LABELS = SAMPLE_DIR / "labels.csv"


@pytest.fixture(scope="module")
def sample_catalog(tmp_path_factory: pytest.TempPathFactory, small_model: Path) -> Catalog:
    """The bundled 1,000-image sample, indexed once for the read-only tests of this module."""
    catalog = Catalog.create(tmp_path_factory.mktemp("sample") / "catalog", small_model)
    report = catalog.index_folder(SAMPLE_DIR, metadata=LABELS, progress=False)
    assert report.added == 1000 and not report.failures
    yield catalog
    catalog.close()


@pytest.fixture()
def image_folder(tmp_path: Path) -> Path:
    """A private copy of 60 sample images (6 per category) that tests may change."""
    folder = tmp_path / "images"
    for category in sorted(p for p in SAMPLE_DIR.iterdir() if p.is_dir()):
        for path in sorted(category.glob("*.png"))[:6]:
            target = folder / category.name / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
    return folder


@pytest.fixture()
def small_catalog(tmp_path: Path, small_model: Path, image_folder: Path) -> Catalog:
    catalog = Catalog.create(tmp_path / "catalog", small_model)
    catalog.index_folder(image_folder, metadata=LABELS, progress=False)
    yield catalog
    catalog.close()


# --- building and searching ----------------------------------------------------------------------


def test_indexing_the_sample_records_items_with_their_metadata(sample_catalog: Catalog) -> None:
    assert len(sample_catalog) == 1000
    assert len(sample_catalog.categories()) == 10
    item = sample_catalog.get("dress/test-00013.png")
    assert item.metadata["category"] == "Dress"
    assert Path(item.path).is_file()


def test_a_catalog_image_finds_itself_first(sample_catalog: Catalog) -> None:
    query = SAMPLE_DIR / "dress" / "test-00013.png"
    hits = sample_catalog.search(query, k=5)
    assert [h.rank for h in hits] == [1, 2, 3, 4, 5]
    assert hits[0].key == "dress/test-00013.png"
    assert hits[0].distance == pytest.approx(0.0, abs=1e-5) and hits[0].similarity == pytest.approx(1.0)
    assert all(a.distance <= b.distance for a, b in zip(hits, hits[1:]))
    for hit in hits:
        assert hit.similarity == pytest.approx(1 - hit.distance / 2)


def test_more_like_this_by_key_leaves_the_item_out(sample_catalog: Catalog) -> None:
    key = "sneaker/" + sorted(p.name for p in (SAMPLE_DIR / "sneaker").glob("*.png"))[0]
    hits = sample_catalog.search(key, k=5)
    assert len(hits) == 5 and key not in [h.key for h in hits]
    by_image = [h for h in sample_catalog.search(SAMPLE_DIR / key, k=6) if h.key != key]
    assert_same_ranking(hits, by_image[:5])


def test_vector_query_is_normalised_and_searched(sample_catalog: Catalog) -> None:
    vector = sample_catalog.vector("bag/test-00598.png") * 3.0
    assert sample_catalog.search(vector, k=1)[0].key == "bag/test-00598.png"


def test_metadata_filter_returns_k_matching_hits(sample_catalog: Catalog) -> None:
    hits = sample_catalog.search(SAMPLE_DIR / "dress" / "test-00013.png", k=7, filter={"category": "Bag"})
    assert len(hits) == 7 and {h.metadata["category"] for h in hits} == {"Bag"}


def test_filter_with_several_values_and_a_callable(sample_catalog: Catalog) -> None:
    query = SAMPLE_DIR / "dress" / "test-00013.png"
    either = sample_catalog.search(query, k=20, filter={"category": ["Bag", "Sandal"]})
    assert len(either) == 20 and {h.metadata["category"] for h in either} <= {"Bag", "Sandal"}
    odd = sample_catalog.search(query, k=5, filter=lambda item: int(item.key[-5]) % 2 == 1)
    assert len(odd) == 5 and all(int(h.key[-5]) % 2 == 1 for h in odd)


@pytest.mark.parametrize(
    "wanted",
    [{"category": ["Bag", "Dress"]}, {"category": "Shirt", "split": "test"}, {"label": 8}],
    ids=["any-of", "all-of", "number-as-text"],
)
def test_a_broad_filter_searched_in_the_graph_agrees_with_exact_search(
    sample_catalog: Catalog, wanted: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Filters matching many items are answered by a wide graph search filtered by the mask; the
    thresholds are lowered here so the 1,000-item sample takes that path."""
    from fashionrec_onnx.catalog import search as planner

    monkeypatch.setattr(planner, "EXACT_AMONG_MAX", 0)
    monkeypatch.setattr(planner, "GRAPH_WIDTH_MAX", 10**6)
    for key in ("dress/test-00013.png", "bag/test-00598.png"):
        graph = sample_catalog.search(key, k=8, filter=wanted)
        exact = sample_catalog.exact_search(key, k=8, filter=wanted)
        assert len(graph) == 8
        assert_same_ranking(graph, exact)
        assert key not in [h.key for h in graph]
        for hit in graph:
            for name, value in wanted.items():
                values = value if isinstance(value, list) else [value]
                assert hit.metadata[name] in [str(v) for v in values]


def test_filter_matching_fewer_than_k_returns_all_matches(sample_catalog: Catalog) -> None:
    keys = ["bag/test-00598.png", "dress/test-00013.png"]
    hits = sample_catalog.search("bag/test-00598.png", k=5, filter=lambda item: item.key in keys)
    assert [h.key for h in hits] == ["dress/test-00013.png"]
    assert sample_catalog.search("bag/test-00598.png", k=5, filter={"category": "Nope"}) == []


def test_hnsw_agrees_with_the_exact_sklearn_oracle_on_the_sample(sample_catalog: Catalog) -> None:
    query = SAMPLE_DIR / "coat" / sorted(p.name for p in (SAMPLE_DIR / "coat").glob("*.png"))[3]
    approx = sample_catalog.search(query, k=10)
    exact = sample_catalog.exact_search(query, k=10)
    assert_same_ranking(approx, exact)
    np.testing.assert_allclose([h.distance for h in approx], [h.distance for h in exact], atol=1e-4)


def test_exact_search_is_true_brute_force(sample_catalog: Catalog) -> None:
    keys = sample_catalog.keys()
    matrix = np.stack([sample_catalog.vector(k) for k in keys])
    query = matrix[10] * 0.5 + matrix[20] * 0.5
    distances = brute_force(keys, matrix, query)  # the sample holds duplicate photos: exact ties
    hits = sample_catalog.exact_search(query, k=5)
    assert_true_top_k(hits, distances, k=5)
    np.testing.assert_allclose([h.distance for h in hits], sorted(distances.values())[:5], atol=1e-5)


def test_unknown_query_string_is_a_clear_error(sample_catalog: Catalog) -> None:
    with pytest.raises(CatalogError, match="neither a key"):
        sample_catalog.search("no/such/key.png")
    with pytest.raises(ValueError, match="k must be"):
        sample_catalog.search("bag/test-00598.png", k=0)


def test_check_reports_recall_against_exact(sample_catalog: Catalog) -> None:
    report = sample_catalog.check(k=5, sample=200)
    assert report.queries == 200 and report.items == 1000
    assert report.recall >= 0.99
    assert sample_catalog.verify() == []


# --- updates ---------------------------------------------------------------------------------------


def test_k_larger_than_the_catalog_returns_what_exists(tmp_path: Path, small_model: Path) -> None:
    with Catalog.create(tmp_path / "tiny", small_model) as catalog:
        rng = np.random.default_rng(0)
        catalog.add_many(["a", "b", "c"], rng.random((3, 2048), np.float32))
        assert len(catalog.search(rng.random(2048).astype(np.float32), k=50)) == 3
        assert len(catalog.search("a", k=50)) == 2
        assert len(catalog.exact_search("a", k=50)) == 2


def test_add_replace_and_remove(small_catalog: Catalog, image_folder: Path) -> None:
    shirt = next((image_folder / "shirt").glob("*.png"))
    small_catalog.add("product-1", shirt, metadata={"category": "Shirt", "name": "Oxford"})
    assert len(small_catalog) == 61
    assert small_catalog.search(shirt, k=2)[0].key in {"product-1", f"shirt/{shirt.name}"}
    assert small_catalog.get("product-1").metadata["name"] == "Oxford"

    bag = next((image_folder / "bag").glob("*.png"))
    small_catalog.add("product-1", bag, metadata={"category": "Bag"})  # same key: replaced
    assert len(small_catalog) == 61
    assert small_catalog.get("product-1").metadata == {"category": "Bag"}
    top = small_catalog.search(bag, k=2)
    assert "product-1" in [h.key for h in top]

    assert small_catalog.remove("product-1") == 1
    assert small_catalog.remove("product-1") == 0  # removing twice is harmless
    assert len(small_catalog) == 60
    assert "product-1" not in [h.key for h in small_catalog.search(bag, k=60)]
    assert small_catalog.verify() == []


def test_products_that_come_and_go_reuse_graph_slots(tmp_path: Path, small_model: Path) -> None:
    """A shop's churn (remove, add new, replace) must not grow the graph without bound."""
    rng = np.random.default_rng(1)
    with Catalog.create(tmp_path / "churn", small_model) as catalog:
        catalog.add_many([f"p{i}" for i in range(200)], rng.random((200, 2048), np.float32))
        for round_ in range(5):
            catalog.remove(*[f"p{i}" for i in range(round_ * 40, round_ * 40 + 40)])
            fresh = rng.random((40, 2048), np.float32)
            catalog.add_many([f"new{round_}-{i}" for i in range(40)], fresh)
            catalog.add_many([f"new{round_}-0"], rng.random((1, 2048), np.float32))  # replaced
            assert [h.key for h in catalog.search(fresh[7], k=1)] == [f"new{round_}-7"]
        assert len(catalog) == 200
        assert catalog.summary()["graph_slots"] <= 201
        assert "p0" not in catalog and catalog.verify() == []
    with Catalog.open(tmp_path / "churn") as reopened:  # slots freed before a save stay reusable
        reopened.remove("new0-1")
        reopened.add_many(["again"], rng.random((1, 2048), np.float32))
        assert reopened.summary()["graph_slots"] <= 201
        assert reopened.check(k=5).recall == 1.0


def test_reindexing_skips_unchanged_files_and_reembeds_changed_ones(
    small_catalog: Catalog, image_folder: Path
) -> None:
    again = small_catalog.index_folder(image_folder, progress=False)
    assert again.unchanged == 60 and again.embedded == 0

    changed = sorted((image_folder / "coat").glob("*.png"))[0]
    Image.open(changed).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(changed)
    os.utime(changed, ns=(1, 1_700_000_000_000_000_000))
    new = image_folder / "coat" / "new-coat.png"
    shutil.copyfile(sorted((image_folder / "coat").glob("*.png"))[1], new)

    report = small_catalog.index_folder(image_folder, progress=False)
    assert (report.updated, report.added, report.unchanged) == (1, 1, 59)
    assert report.embedded == 2
    assert small_catalog.search(changed, k=1)[0].key == f"coat/{changed.name}"


def test_prune_removes_items_whose_files_have_gone(small_catalog: Catalog, image_folder: Path) -> None:
    gone = sorted((image_folder / "bag").glob("*.png"))[0]
    gone.unlink()
    kept = small_catalog.index_folder(image_folder, progress=False)
    assert kept.removed == 0 and f"bag/{gone.name}" in small_catalog
    pruned = small_catalog.index_folder(image_folder, progress=False, prune=True)
    assert pruned.removed == 1 and f"bag/{gone.name}" not in small_catalog
    assert len(small_catalog) == 59


def test_a_second_folder_with_the_same_keys_is_refused_until_given_a_prefix(
    small_catalog: Catalog, image_folder: Path, tmp_path: Path
) -> None:
    other = tmp_path / "shop-b"
    shutil.copytree(image_folder / "bag", other / "bag")
    before = {item.key: item.path for item in small_catalog.items()}
    with pytest.raises(CatalogError, match=r"6 image\(s\) of .*shop-b.*'bag/.*key prefix"):
        small_catalog.index_folder(other, progress=False)
    assert {item.key: item.path for item in small_catalog.items()} == before  # nothing written

    report = small_catalog.index_folder(other, key_prefix="shop-b/", metadata=LABELS, progress=False)
    assert report.added == 6 and len(small_catalog) == 66
    item = small_catalog.get(f"shop-b/bag/{next(other.glob('bag/*.png')).name}")
    assert item.metadata["category"] == "Bag"  # metadata found by the path relative to the folder
    again = small_catalog.index_folder(image_folder, prune=True, progress=False)
    assert again.unchanged == 60 and again.removed == 0  # pruning one folder spares the other's


def test_a_subfolder_of_an_indexed_folder_is_not_indexed_twice(
    small_catalog: Catalog, image_folder: Path
) -> None:
    with pytest.raises(CatalogError, match=r"6 image\(s\) .* already indexed as 'bag/"):
        small_catalog.index_folder(image_folder / "bag", progress=False)
    assert len(small_catalog) == 60


def test_a_moved_folder_takes_over_its_keys_without_reembedding(
    small_catalog: Catalog, image_folder: Path, tmp_path: Path
) -> None:
    vector = small_catalog.vector("bag/" + next(image_folder.glob("bag/*.png")).name)
    moved = image_folder.rename(tmp_path / "moved")
    edited = next(moved.glob("shirt/*.png"))
    Image.new("RGB", (28, 28), "red").save(edited)  # changed while moved: embedded again
    report = small_catalog.index_folder(moved, progress=False)
    assert (report.moved, report.updated, report.added, len(small_catalog)) == (59, 1, 0, 60)
    assert all(item.path.startswith(str(moved)) for item in small_catalog.items())
    assert np.array_equal(small_catalog.vector("bag/" + next(moved.glob("bag/*.png")).name), vector)
    assert small_catalog.index_folder(moved, progress=False).unchanged == 60
    assert small_catalog.verify() == []


def test_unreadable_files_are_skipped_counted_and_listed(small_catalog: Catalog, image_folder: Path) -> None:
    (image_folder / "broken.jpg").write_bytes(b"\xff\xd8 half a jpeg")
    (image_folder / "empty.png").write_bytes(b"")
    report = small_catalog.index_folder(image_folder, progress=False)
    assert {f.source: f.reason for f in report.failures}.keys() == {"broken.jpg", "empty.png"}
    assert report.unchanged == 60 and len(small_catalog) == 60


def test_new_metadata_is_applied_without_reembedding(
    small_catalog: Catalog, image_folder: Path, tmp_path: Path
) -> None:
    key = small_catalog.keys()[0]
    table = tmp_path / "meta.jsonl"
    table.write_text(f'{{"key": "{key}", "category": "Special", "colour": "red"}}\n')
    report = small_catalog.index_folder(image_folder, metadata=table, progress=False)
    assert report.embedded == 0 and report.metadata_updated == 1
    assert small_catalog.get(key).metadata == {"category": "Special", "colour": "red"}


# --- persistence and models ----------------------------------------------------------------------


def test_a_reopened_catalog_answers_the_same(small_catalog: Catalog, image_folder: Path) -> None:
    query = sorted((image_folder / "trouser").glob("*.png"))[2]
    before = small_catalog.search(query, k=5)
    small_catalog.set_ef(77)
    small_catalog.close()
    with Catalog.open(small_catalog.path) as reopened:
        assert len(reopened) == 60
        assert reopened.params.ef == 77  # hnswlib forgets ef; the catalog does not
        assert reopened.search(query, k=5) == before
        assert reopened.verify() == []


def test_a_different_model_is_refused(small_catalog: Catalog, test_model: Path) -> None:
    small_catalog.close()
    with pytest.raises(ModelMismatchError, match="built with model"):
        Catalog.open(small_catalog.path, test_model)


def test_creating_over_an_existing_catalog_is_refused(small_catalog: Catalog, small_model: Path) -> None:
    with pytest.raises(CatalogError, match="already exists"):
        Catalog.create(small_catalog.path, small_model)


def test_opening_a_missing_catalog_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="fashionrec index"):
        Catalog.open(tmp_path / "nothing")


def test_a_shared_embedder_can_be_passed_in(tmp_path: Path, small_model: Path, image_folder: Path) -> None:
    with Embedder(small_model) as embedder, Catalog.create(tmp_path / "c", embedder) as catalog:
        catalog.index_folder(image_folder / "bag", progress=False)
        assert len(catalog) == 6 and catalog.embedder is embedder


# --- corruption ------------------------------------------------------------------------------------


def graph_file(catalog_dir: Path) -> Path:
    (path,) = catalog_dir.glob("graph-*.hnsw")
    return path


def test_truncated_graph_is_detected_and_rebuild_recovers(small_catalog: Catalog) -> None:
    small_catalog.close()
    graph = graph_file(small_catalog.path)
    graph.write_bytes(graph.read_bytes()[: graph.stat().st_size // 3])
    with pytest.raises(CatalogCorruptError) as caught:
        Catalog.open(small_catalog.path)
    assert graph.name in str(caught.value) and "fashionrec rebuild" in str(caught.value)
    with Catalog.open(small_catalog.path, rebuild=True) as repaired:
        assert len(repaired) == 60 and repaired.verify() == []
    with Catalog.open(small_catalog.path) as reopened:
        assert reopened.check(k=5).recall >= 0.99


def test_garbage_graph_and_missing_graph_are_detected(small_catalog: Catalog) -> None:
    small_catalog.close()
    graph = graph_file(small_catalog.path)
    size = graph.stat().st_size
    graph.write_bytes(np.random.default_rng(0).bytes(size))
    with pytest.raises(CatalogCorruptError, match="corrupt"):
        Catalog.open(small_catalog.path)
    graph.unlink()
    with pytest.raises(CatalogCorruptError, match="missing"):
        Catalog.open(small_catalog.path)


def test_corrupt_database_names_the_file(small_catalog: Catalog) -> None:
    small_catalog.close()
    database = small_catalog.path / "catalog.sqlite"
    database.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(CatalogCorruptError, match="catalog.sqlite"):
        Catalog.open(small_catalog.path)


def test_writes_not_yet_in_the_saved_graph_are_reconciled_from_the_store(small_catalog: Catalog) -> None:
    # Items committed after the last graph save (as after a crash, or while another process
    # holds the catalog open) are found by whoever opens the catalog next.
    small_catalog.save()
    extra = np.random.default_rng(3).random((5, 2048), np.float32)
    small_catalog.add_many([f"late-{i}" for i in range(5)], extra)
    small_catalog.remove(small_catalog.keys()[0])
    with Catalog.open(small_catalog.path, readonly=True) as other:
        assert len(other) == 64 and other.verify() == []
        assert other.search(extra[2], k=1)[0].key == "late-2"
        more = np.random.default_rng(4).random((1, 2048), np.float32)
        small_catalog.add_many(["later"], more)  # and it keeps up with writes made after it opened
        assert other.search(more[0], k=1)[0].key == "later"


# --- recall on real embeddings and concurrency ----------------------------------------------------------


@pytest.mark.slow
def test_default_parameters_reach_recall_at_5_of_99_percent_on_20000_real_images(
    tmp_path: Path, small_model: Path, fashion_mnist_dir: Path
) -> None:
    images, _ = load_split("train", fashion_mnist_dir)
    images = images[:20_000]
    with Embedder(small_model) as embedder:
        pixels = np.stack([np.asarray(Image.fromarray(x).convert("RGB").resize((64, 64))) for x in images])
        vectors = embedder.embed_pixels(pixels, batch_size=128)
        with Catalog.create(tmp_path / "fm", embedder) as catalog:
            catalog.add_many([f"fm-{i}" for i in range(len(vectors))], vectors)
            report = catalog.check(k=5, sample=1000)
    assert report.items == 20_000
    assert report.recall >= 0.99, report


def test_concurrent_searches_match_serial_results_while_a_writer_adds(small_catalog: Catalog) -> None:
    keys = small_catalog.keys()[:20]
    serial = {key: [h.key for h in small_catalog.search(key, k=5)] for key in keys}
    errors: list[BaseException] = []
    mismatches: list[str] = []
    stop = threading.Event()

    def reader() -> None:
        try:
            for _ in range(5):
                for key in keys:
                    got = [h.key for h in small_catalog.search(key, k=5)]
                    if got != serial[key]:
                        mismatches.append(key)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def writer() -> None:
        rng = np.random.default_rng(9)
        number = 0
        try:
            while not stop.is_set() and number < 200:
                # far from every real embedding, so the readers' answers must not change
                small_catalog.add_many([f"w-{number}"], -rng.random((1, 2048), np.float32))
                number += 1
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(6)]
    write = threading.Thread(target=writer)
    write.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    stop.set()
    write.join(timeout=60)
    assert not errors and not mismatches
    assert small_catalog.verify() == []
