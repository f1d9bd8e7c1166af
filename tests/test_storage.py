"""The storage design for a million items: lazy items, a memory-mapped vector file read in blocks,
filters as masks, the 0.1.0 migration, and crash safety of the new files."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from oracle import assert_same_ranking, brute_force, catalog_distances
from sklearn.neighbors import NearestNeighbors

from fashionrec_onnx import Catalog
from fashionrec_onnx.catalog import search as planner
from fashionrec_onnx.catalog import vectors as vector_file

V1_CATALOGS = Path(__file__).parent / "data" / "v1-catalogs"
DIM = 2048


def structured(n: int, seed: int, clusters: int = 12) -> np.ndarray:
    """Clustered unit vectors: neighbour lists that mean something (isotropic noise would tie)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, DIM))
    vectors = centres[rng.integers(0, clusters, n)] + 0.5 * rng.normal(size=(n, DIM))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def bucket(i: int) -> dict[str, str]:
    """Metadata whose values select about 1%, 10% and 50% of the items."""
    return {
        "one": str(i % 100 == 0),
        "ten": str(i % 10 == 0),
        "half": str(i % 2 == 0),
        "category": f"c{i % 7}",
    }


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory, small_model: Path) -> Catalog:
    """6,000 structured vectors with metadata and some churn (removed and re-added items)."""
    catalog = Catalog.create(tmp_path_factory.mktemp("storage") / "catalog", small_model)
    vectors = structured(6000, seed=1)
    keys = [f"item-{i:05d}" for i in range(len(vectors))]
    for start in range(0, len(keys), 2000):
        stop = start + 2000
        catalog.add_many(
            keys[start:stop], vectors[start:stop], metadata=[bucket(i) for i in range(start, stop)]
        )
    catalog.remove(*keys[100:300])  # holes in the vector file
    catalog.add_many(keys[150:160], vectors[150:160], metadata=[bucket(i) for i in range(150, 160)])
    yield catalog
    catalog.close()


def stored_matrix(catalog: Catalog) -> tuple[list[str], np.ndarray]:
    keys = catalog.keys()
    return keys, catalog.vectors(keys)


# -- opening and memory ----------------------------------------------------------------------------


def test_opening_does_not_turn_every_item_into_a_python_object(big: Catalog) -> None:
    big.save()
    tracemalloc.start()
    try:
        with Catalog.open(big.path, readonly=True) as reopened:
            _, peak = tracemalloc.get_traced_memory()
            assert len(reopened) == 5810
    finally:
        tracemalloc.stop()
    # 5,810 items with four metadata fields each would take several MB as Python objects
    assert peak < 1_000_000, f"open allocated {peak:,} bytes"


def test_stored_vectors_are_a_memory_mappable_matrix(big: Catalog) -> None:
    summary = big.summary()
    matrix = np.memmap(big.path / summary["vector_file"], np.float32, "r", offset=vector_file.HEADER_BYTES)
    matrix = matrix.reshape(-1, DIM)
    item = big.get("item-00042")
    assert np.array_equal(matrix[item.label], big.vector("item-00042"))


# -- exact search in blocks against scikit-learn -----------------------------------------------------


@pytest.mark.parametrize("block_rows", [None, 333])
def test_exact_search_over_blocks_equals_scikit_learn(
    big: Catalog, block_rows: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    if block_rows:
        monkeypatch.setattr(vector_file, "BLOCK_BYTES", block_rows * DIM * 4)
    keys, matrix = stored_matrix(big)
    oracle = NearestNeighbors(algorithm="brute", metric="euclidean").fit(matrix)
    queries = structured(20, seed=7)
    distances, rows = oracle.kneighbors(queries, n_neighbors=10)
    for query, expected_rows, expected_d in zip(queries, rows, distances):
        hits = big.exact_search(query, k=10)
        assert_same_ranking(hits, [keys[r] for r in expected_rows], brute_force(keys, matrix, query))
        assert np.allclose([h.distance for h in hits], expected_d**2, atol=1e-4)


def test_exact_search_with_a_filter_equals_scikit_learn_on_the_matching_items(big: Catalog) -> None:
    keys, matrix = stored_matrix(big)
    items = {item.key: item for item in big.items()}
    matching = [i for i, key in enumerate(keys) if items[key].metadata["category"] in ("c1", "c4")]
    oracle = NearestNeighbors(algorithm="brute").fit(matrix[matching])
    for query in structured(10, seed=8):
        _, rows = oracle.kneighbors(query[None], n_neighbors=8)
        hits = big.exact_search(query, k=8, filter={"category": ["c1", "c4"]})
        assert_same_ranking(hits, [keys[matching[r]] for r in rows[0]], brute_force(keys, matrix, query))


# -- filtered search at every selectivity ------------------------------------------------------------


@pytest.mark.parametrize("field", ["one", "ten", "half"])
@pytest.mark.parametrize("path", ["as planned", "graph forced"])
def test_filtered_search_equals_exact_filtered_search_at_every_selectivity(
    big: Catalog, field: str, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if path == "graph forced":
        monkeypatch.setattr(planner, "EXACT_AMONG_MAX", 0)
        monkeypatch.setattr(planner, "GRAPH_WIDTH_MAX", 10**6)
    found = expected = 0
    for key in [f"item-{i:05d}" for i in range(1000, 6000, 250)]:
        hits = big.search(key, k=5, filter={field: "True"})
        exact = big.exact_search(key, k=5, filter={field: "True"})
        assert all(h.metadata[field] == "True" for h in hits) and key not in [h.key for h in hits]
        found += len({h.key for h in hits} & {h.key for h in exact})
        expected += len(exact)
    assert found / expected >= 0.99


def test_a_filter_naming_an_unknown_field_is_an_error_that_lists_the_fields(big: Catalog) -> None:
    from fashionrec_onnx import CatalogError

    with pytest.raises(CatalogError, match="categroy.*category"):
        big.search("item-01000", k=5, filter={"categroy": "c1"})


def test_an_unknown_filter_value_is_a_warning_with_close_values(
    big: Catalog, caplog: pytest.LogCaptureFixture
) -> None:
    assert big.search("item-01000", k=5, filter={"category": "C1"}) == []
    assert "did you mean 'c1'" in caplog.text


# -- catalogs written by 0.1.0 -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["float32", "float16-pca"])
def test_a_catalog_written_by_0_1_0_is_upgraded_on_open_and_answers_as_before(
    tmp_path: Path, name: str
) -> None:
    root = tmp_path / name
    shutil.copytree(V1_CATALOGS / name, root)
    expected = json.loads((root / "expected.json").read_text())
    with Catalog.open(root) as catalog:
        assert len(catalog) == expected["items"] and catalog.params.ef == expected["ef"]
        assert (catalog.reduction is not None) == bool(expected["reduced"])
        for key, neighbours in expected["exact"].items():
            distance = catalog_distances(catalog, catalog.vector(key))
            assert_same_ranking(catalog.exact_search(key, k=5), neighbours, distance)
        bags = catalog.exact_search("p000/photo-0.jpg", k=5, filter={"category": "Bag"})
        distance = catalog_distances(catalog, catalog.vector("p000/photo-0.jpg"))
        assert_same_ranking(bags, expected["filtered"], distance)
        assert np.allclose(catalog.vector("p000/photo-0.jpg")[:8], expected["vector_p000"], atol=1e-3)
        assert catalog.verify() == []
        assert catalog.check(k=5, sample=50).recall >= 0.9
    with sqlite3.connect(root / "catalog.sqlite") as db:
        columns = [row[1] for row in db.execute("PRAGMA table_info(items)")]
        version = db.execute("SELECT value FROM settings WHERE name = 'schema_version'").fetchone()[0]
    assert "vector" not in columns and "feed" in columns and version == "3"
    with Catalog.open(root, readonly=True) as again:  # and it keeps opening
        assert len(again) == expected["items"]


# -- crash safety of the new files --------------------------------------------------------------------

IMPORTER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from fashionrec_onnx import Catalog
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(6000, 2048)).astype(np.float32)
    with Catalog.open_or_create(sys.argv[1], sys.argv[2]) as catalog:
        for start in range(0, 6000, 500):
            keys = [f"v-{i}" for i in range(start, start + 500)]
            if keys[-1] in catalog:
                continue
            metadata = [{"n": str(i)} for i in range(start, start + 500)]
            catalog.add_many(keys, vectors[start : start + 500], metadata=metadata)
    """
)


def committed(database: Path) -> int:
    try:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5) as db:
            return int(db.execute("SELECT COUNT(*) FROM items").fetchone()[0])
    except sqlite3.Error:
        return 0


def test_sigkill_during_an_import_of_vectors_leaves_a_catalog_that_opens_verifies_and_resumes(
    tmp_path: Path, small_model: Path
) -> None:
    root = tmp_path / "catalog"
    command = [sys.executable, "-c", IMPORTER, str(root), str(small_model)]
    process = subprocess.Popen(command)
    deadline = time.monotonic() + 300
    try:
        while committed(root / "catalog.sqlite") < 1500:
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.005)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=60)
    with Catalog.open(root) as catalog:
        survived = len(catalog)
        assert survived >= 1500 and survived % 500 == 0 and catalog.verify() == []
    subprocess.run(command, check=True, timeout=600)  # run again: it resumes
    with Catalog.open(root) as catalog:
        assert len(catalog) == 6000 and catalog.verify() == []
        assert sorted(catalog.keys()) == sorted(f"v-{i}" for i in range(6000))
        assert catalog.get("v-4321").metadata == {"n": "4321"}


def test_the_float16_conversion_graph_is_the_one_onnx_builds() -> None:
    """The library keeps small serialised graphs instead of depending on the onnx package."""
    from onnx import TensorProto, helper

    from fashionrec_onnx.catalog import kernels

    def model(name: str, nodes: list, inputs: list, outputs: list) -> bytes:
        graph = helper.make_graph(nodes, name, inputs, outputs)
        built = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="fashionrec"
        )
        built.ir_version = 8
        return built.SerializeToString()

    tensor = helper.make_tensor_value_info
    cast = helper.make_node("Cast", ["half"], ["single"], to=TensorProto.FLOAT)
    assert kernels.graph_bytes("to_float32") == model(
        "half_to_float", [cast], [tensor("half", TensorProto.FLOAT16, ["n", "d"])],
        [tensor("single", TensorProto.FLOAT, ["n", "d"])],
    )  # fmt: skip
    rng = np.random.default_rng(0)
    half = rng.standard_normal((5, 7)).astype(np.float16)
    assert np.array_equal(kernels.to_float32(half), half.astype(np.float32))


def test_a_query_projection_never_waits_for_another_threads_scan() -> None:
    """A query is projected on one BLAS thread when BLAS is free, and with einsum while another
    thread's scan holds it (the projection must not queue behind a 200 ms exact scan); inside
    a scan of its own, the same thread projects without deadlock. The product is the same."""
    import threading

    from fashionrec_onnx.catalog import kernels

    rng = np.random.default_rng(3)
    rows = rng.standard_normal((2, 64)).astype(np.float32)
    matrix = rng.standard_normal((16, 64)).astype(np.float32)
    want = rows.astype(np.float64) @ matrix.T.astype(np.float64)
    assert np.allclose(kernels.few_rows_times(rows, matrix), want, atol=1e-4)
    with kernels.one_blas_thread():
        assert np.allclose(kernels.few_rows_times(rows, matrix), want, atol=1e-4)
    holding, release = threading.Event(), threading.Event()

    def scan() -> None:
        with kernels.one_blas_thread():
            holding.set()
            release.wait(60)

    other = threading.Thread(target=scan)
    other.start()
    try:
        assert holding.wait(60)
        got: list[np.ndarray] = []
        searcher = threading.Thread(target=lambda: got.append(kernels.few_rows_times(rows, matrix)))
        searcher.start()
        searcher.join(60)
        assert not searcher.is_alive() and np.allclose(got[0], want, atol=1e-4)
    finally:
        release.set()
        other.join(60)


def test_one_blas_thread_limits_blas_and_gives_back_what_it_found() -> None:
    """Inside, the BLAS libraries the scans use run on one thread, also when entered again and on
    another thread after this one has scanned (threadpoolctl lets one thread at a time set
    OpenBLAS' pool, and its ``limit`` hands it back); after, each has the thread count it had."""
    import threading

    from threadpoolctl import threadpool_info, threadpool_limits

    from fashionrec_onnx.catalog import kernels

    with kernels.one_blas_thread():  # the libraries a scan limits: those loaded at its first use
        scanned = {lib["filepath"] for lib in kernels._controller.select(user_api="blas").info()}
    if not scanned:
        pytest.skip("threadpoolctl finds no BLAS library in this numpy")

    def blas_threads() -> list[int]:
        return [lib["num_threads"] for lib in threadpool_info() if lib["filepath"] in scanned]

    with threadpool_limits(limits=2, user_api="blas"):
        before = blas_threads()
        assert all(threads == 2 for threads in before)
        with kernels.one_blas_thread():
            assert all(threads == 1 for threads in blas_threads())
            with kernels.one_blas_thread():
                assert all(threads == 1 for threads in blas_threads())
            assert all(threads == 1 for threads in blas_threads())
        assert blas_threads() == before
    # a service: this thread scans, then a worker thread does
    with kernels.one_blas_thread():
        pass
    inside: list[list[int]] = []

    def scan() -> None:
        with kernels.one_blas_thread():
            inside.append(blas_threads())

    other = threading.Thread(target=scan)
    other.start()
    other.join(60)
    assert inside and all(threads == 1 for threads in inside[0])


def test_reading_no_rows_gives_an_empty_matrix(tmp_path: Path) -> None:
    """`VectorFile.read` of no labels is a (0, dim) matrix of the stored type, not an error."""
    for dtype in ("float32", "float16"):
        vectors = vector_file.VectorFile.create(tmp_path / f"vectors.{dtype}", 8, dtype)
        try:
            assert vectors.read([], raw=True).shape == (0, 8)
            assert vectors.read(np.zeros(0, np.int64)).dtype == np.float32
        finally:
            vectors.close()


def test_stored_metadata_reads_from_text_or_bytes_as_json_loads_did() -> None:
    """Stored metadata reads as ``json.loads`` reads it: bytes in their encoding, and a byte
    order mark refused with its own message."""
    from fashionrec_onnx.json_values import loads_stored

    text = '{"a": NaN, "b": [1, 2.5], "c": "\u00e9"}'
    assert loads_stored(text) == loads_stored(text.encode()) == {"a": None, "b": [1, 2.5], "c": "é"}
    assert loads_stored(text.encode("utf-16")) == loads_stored(text)
    with pytest.raises(json.JSONDecodeError, match="BOM"):
        loads_stored("\ufeff" + text)
