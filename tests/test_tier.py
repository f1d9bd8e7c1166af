"""The compact tier of a reduced catalog: exact search that reads few full rows and stays exact,
filtered search through it, kept in step with writes, rebuilt when lost, checked by `verify`, and
gained by a catalog written before it existed."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from oracle import assert_same_ranking, assert_true_top_k, brute_force, catalog_distances

from fashionrec_onnx import Catalog
from fashionrec_onnx.catalog import oracle, search, writing
from fashionrec_onnx.catalog.matches import LONGEST_KEY, MatchCache, Matches
from fashionrec_onnx.catalog.pca import PCA
from fashionrec_onnx.catalog.tier import MAX_GRAPH_DIM, Tier
from fashionrec_onnx.errors import CatalogCorruptError

V3_CATALOGS = Path(__file__).parent / "data" / "v3-catalogs"
ITEMS = 3000


def clustered(n: int, seed: int, dim: int = 2048) -> np.ndarray:
    """Unit vectors in clusters spread mostly over a low-rank subspace, as image embeddings are:
    a PCA keeps most of them, and neighbours are close enough for the bound to matter."""
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(48, dim))
    centres = rng.normal(size=(40, 48))
    vectors = (centres[rng.integers(0, 40, n)] + 0.6 * rng.normal(size=(n, 48))) @ basis
    vectors += 0.8 * rng.normal(size=(n, dim))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def queries(vectors: np.ndarray, count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    near = vectors[rng.choice(len(vectors), count)] + 0.02 * rng.normal(size=(count, vectors.shape[1]))
    return (near / np.linalg.norm(near, axis=1, keepdims=True)).astype(np.float32)


class CountingReads:
    """Counts the full rows a search reads from the real vector file (and reads them)."""

    def __init__(self, catalog: Catalog) -> None:
        self.vectors = catalog._core.vectors
        self.rows = 0
        self._read = self.vectors.read

    def __enter__(self) -> CountingReads:
        def read(labels, raw: bool = False):  # type: ignore[no-untyped-def]
            self.rows += len(labels)
            return self._read(labels, raw=raw)

        self.vectors.read = read  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        del self.vectors.read


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    return clustered(ITEMS, seed=1)


@pytest.fixture(scope="module", params=["float32", "float16"])
def built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, small_model: Path,
          vectors: np.ndarray) -> Path:  # fmt: skip
    root = tmp_path_factory.mktemp("tier") / request.param
    with Catalog.create(root, small_model, vector_dtype=request.param, M=8, ef_construction=40) as catalog:
        keys = [f"item-{i:05d}" for i in range(ITEMS)]
        catalog.add_many(
            keys, vectors, metadata=[{"shade": f"s{i % 50}", "half": str(i % 2)} for i in range(ITEMS)]
        )
        catalog.reduce(64)
    return root


@pytest.fixture()
def reduced(built: Path, tmp_path: Path) -> Catalog:
    shutil.copytree(built, tmp_path / "reduced")
    catalog = Catalog.open(tmp_path / "reduced")
    yield catalog
    catalog.close()


def stored(catalog: Catalog) -> tuple[list[str], np.ndarray]:
    keys = catalog.keys()
    return keys, catalog.vectors(keys)


def test_a_reduced_catalog_keeps_a_compact_tier_beside_its_vectors(reduced: Catalog) -> None:
    core = reduced._core
    assert core.tier is not None and core.tier_rows == core.rows == ITEMS
    assert core.tier.path.stat().st_size < core.vectors.path.stat().st_size / 4
    assert reduced.verify() == []


def test_exact_search_through_the_tier_equals_brute_force_and_reads_few_rows(reduced: Catalog) -> None:
    keys, matrix = stored(reduced)
    for k in (1, 5, 40):
        for query in queries(matrix, 6, seed=k):
            with CountingReads(reduced) as reads:
                hits = reduced.exact_search(query, k=k)
            assert_true_top_k(hits, brute_force(keys, matrix, query), k)
            assert reads.rows < ITEMS / 3


def test_the_bounded_scan_returns_what_the_full_scan_returns(reduced: Catalog) -> None:
    core = reduced._core
    _, matrix = stored(reduced)
    batch = queries(matrix, 40, seed=9)
    mask = core.live_mask()
    mask[::7] = False
    assert core.tier is not None
    full, full_d = oracle.exact_topk(core.vectors, core.rows, mask, batch, 10)
    bounded, bounded_d = oracle.bounded_topk(
        core.vectors, core.rows, core.tier, core.tier_rows, mask, batch, 10
    )
    np.testing.assert_allclose(bounded_d, full_d, atol=1e-5)
    assert (np.sort(full, axis=1) == np.sort(bounded, axis=1)).mean() > 0.99  # the rest: ties


def test_the_bounded_scan_of_many_queries_with_known_answers_returns_the_full_scan(reduced: Catalog) -> None:
    core = reduced._core
    _, matrix = stored(reduced)
    batch = queries(matrix, 60, seed=10)
    mask = core.live_mask()
    assert core.tier is not None
    full, full_d = oracle.exact_topk(core.vectors, core.rows, mask, batch, 5)
    rng = np.random.default_rng(0)
    known = rng.choice(ITEMS, size=(60, 8))  # any live items bound the k-th distance from above
    known[:5] = -1  # none known: those queries are scanned as by bounded_topk
    found, found_d = oracle.bounded_within(
        core.vectors, core.rows, core.tier, core.tier_rows, mask, batch, 5, known
    )
    np.testing.assert_allclose(found_d, full_d, atol=1e-5)
    assert (np.sort(full, axis=1) == np.sort(found, axis=1)).mean() > 0.99  # the rest: ties


def test_the_bounded_scan_in_the_graph_space_returns_the_projected_full_scan(reduced: Catalog) -> None:
    core = reduced._core
    assert core.tier is not None and core.reduction is not None and core.graph.index is not None
    batch = core.reduction.transform(queries(stored(reduced)[1], 60, seed=11))
    mask = core.live_mask()
    full, full_d = oracle.exact_topk(
        core.vectors, core.rows, mask, batch, 5, transform=core.reduction.transform
    )
    graph, _ = core.graph.index.search(batch, 5, core.count)
    found, found_d = oracle.bounded_within(
        core.vectors, core.rows, core.tier, core.tier_rows, mask, batch, 5, graph, graph_space=True
    )
    np.testing.assert_allclose(found_d, full_d, atol=1e-5)
    assert (np.sort(full, axis=1) == np.sort(found, axis=1)).mean() > 0.99  # the rest: ties


def test_the_tier_bound_never_exceeds_the_true_distance(vectors: np.ndarray, tmp_path: Path) -> None:
    pca = PCA.fit(vectors[:1000], 32)
    for codes in ("int8", "float16"):
        tier = Tier.create(tmp_path / f"tier.{codes}", pca, "pca.npz", "vectors", vectors[:500], codes)
        assert tier.widened and tier.pca.dim == 64 and tier.pca.extends(pca)  # twice the graph's
        rows = tier.encode(vectors)  # the scales come from 500 rows: some codes are clipped
        batch = queries(vectors, 20, seed=3)
        true = ((batch[:, None, :].astype(np.float64) - vectors[None, :, :]) ** 2).sum(axis=2)
        fine = tier.bounds(rows, tier.prepare(batch))
        coarse = tier.bounds(rows, tier.prepare(batch), coarse=True)  # the graph's 32 coordinates
        assert (fine <= true + 1e-5).all() and (coarse <= true + 1e-5).all()
        assert (fine >= coarse - 1e-4).mean() > 0.99  # the wider space bounds tighter
        assert (tier.mismatched(rows, vectors) == 0).all()
        # the estimates order rows better on every coordinate than on the graph's alone
        nearest = np.argsort(true, axis=1)[:, :5]
        shares = []
        for coarse_order in (False, True):
            estimated = np.argsort(tier.estimates(rows, tier.prepare(batch), coarse_order), axis=1)[:, :15]
            shares.append(np.mean([len(set(a) & set(b)) / 5 for a, b in zip(nearest, estimated)]))
        assert shares[0] >= shares[1] and shares[0] > 0.9


def test_a_wider_space_extends_the_graph_pca_with_orthonormal_axes_outside_it(vectors: np.ndarray) -> None:
    pca = PCA.fit(vectors[:1000], 32)
    wide = pca.widened(vectors[1000:2000], 32)
    assert wide.dim == 64 and wide.extends(pca) and not wide.whiten
    gram = wide.components.astype(np.float64) @ wide.components.T.astype(np.float64)
    np.testing.assert_allclose(gram, np.eye(64), atol=1e-5)
    assert wide.explained_variance_ratio > pca.explained_variance_ratio
    few = pca.widened(vectors[:20], 32)  # a sample spans no more than its rows
    assert 32 < few.dim <= 52 and few.extends(pca)


def test_search_reads_the_full_rows_of_only_the_candidates_the_tier_estimates_nearest(
    reduced: Catalog,
) -> None:
    core = reduced._core
    _, matrix = stored(reduced)
    none = np.zeros(0, np.int64)
    found_too, wanted = 0, 0
    for k in (1, 5, 20):
        for query in queries(matrix, 5, seed=20 + k):
            pool, _ = search._graph(core, query, search._pool(core, k))
            want, want_d = search.rerank(core, query, pool)  # every candidate's full row
            with CountingReads(reduced) as reads:
                found, found_d = search.search(core, query, k, none, None)
            assert reads.rows == search._reads(core, k) == 5 * k + 5 < len(pool)  # a 128-d tier
            assert (np.diff(found_d) >= 0).all() and (found_d >= want_d[: len(found_d)] - 1e-5).all()
            found_too, wanted = found_too + len(set(found) & set(want[:k])), wanted + k
    assert found_too / wanted >= 0.95  # an estimate orders the candidates: not exact, nearly as good


def test_a_filter_of_many_values_is_the_union_of_its_values(reduced: Catalog) -> None:
    query = queries(stored(reduced)[1], 1, seed=5)[0]
    shades = [f"s{i}" for i in range(12)]  # more values than are compared one by one
    together = reduced.exact_search(query, k=30, filter={"shade": shades})
    apart = sorted(
        (h for s in shades for h in reduced.exact_search(query, k=30, filter={"shade": s})),
        key=lambda h: (h.distance, h.key),
    )
    assert [h.key for h in together] == [h.key for h in apart[:30]]


def test_filtered_search_scans_the_tier_and_finds_the_exact_filtered_top_k(reduced: Catalog) -> None:
    keys, matrix = stored(reduced)
    for query in queries(matrix, 5, seed=4):
        with CountingReads(reduced) as reads:
            hits = reduced.search(query, k=5, filter={"half": "1"})
        inside = [i for i, key in enumerate(keys) if int(key[5:]) % 2 == 1]
        distances = brute_force([keys[i] for i in inside], matrix[inside], query)
        assert_true_top_k(hits, distances, 5)
        assert reads.rows < len(inside) / 3


def test_the_estimated_re_rank_reads_every_row_the_tier_does_not_cover(reduced: Catalog) -> None:
    core = reduced._core
    assert core.tier is not None
    query = queries(stored(reduced)[1], 1, seed=30)[0]
    labels = np.arange(0, ITEMS, 10)  # 300 candidates, 150 of them past a lagging tier's rows
    with CountingReads(reduced) as reads:
        found, distances = oracle.estimated_among(core.vectors, core.tier, 1500, labels, query, 5, 40)
    assert reads.rows == 40 + 150 and len(found) == 5 and (np.diff(distances) >= 0).all()


@pytest.mark.parametrize("path", ["graph", "scan"])
def test_a_broad_filter_reads_only_the_full_rows_the_tier_estimates_nearest(
    reduced: Catalog, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Broad filters: through the graph, or scanned in the tier past EXACT_AMONG_MAX matches. The
    thresholds are moved so that 1,500 matches take each path."""
    monkeypatch.setattr(search, "EXACT_AMONG_MAX", 100)
    monkeypatch.setattr(search, "TIER_MATCH_COST" if path == "graph" else "GRAPH_WIDTH_COST", 1e9)
    keys, matrix = stored(reduced)
    inside = [i for i, key in enumerate(keys) if int(key[5:]) % 2 == 1]
    found_too = 0
    for query in queries(matrix, 10, seed=6):
        with CountingReads(reduced) as reads:
            hits = reduced.search(query, k=5, filter={"half": "1"})
        assert reads.rows == search._reads(reduced._core, 5) == 30  # a 128-d tier
        assert len(hits) == 5 and all(int(h.key[5:]) % 2 == 1 for h in hits)
        exact = brute_force([keys[i] for i in inside], matrix[inside], query)
        found_too += len({h.key for h in hits} & set(sorted(exact, key=exact.__getitem__)[:5]))
    assert found_too / 50 >= 0.95


def test_writes_keep_the_tier_in_step(reduced: Catalog, vectors: np.ndarray) -> None:
    extra = clustered(300, seed=5)
    reduced.add_many([f"new-{i}" for i in range(300)], extra)
    reduced.add("item-00003", extra[0])  # replaced: a new row
    reduced.remove("item-00004", "new-7")
    core = reduced._core
    assert core.tier_rows == core.rows == ITEMS + 301
    keys, matrix = stored(reduced)
    for query in [extra[10], extra[0], *queries(matrix, 3, seed=6)]:
        assert_true_top_k(reduced.exact_search(query, k=5), brute_force(keys, matrix, query), 5)
    assert reduced.verify() == []
    with Catalog.open(reduced.path, readonly=True) as other:  # another process sees the same rows
        assert other._core.tier_rows == core.rows
        assert [h.key for h in other.exact_search(extra[10], k=5)] == [
            h.key for h in reduced.exact_search(extra[10], k=5)
        ]


def test_a_lost_tier_is_rebuilt_when_the_catalog_opens_for_writing(reduced: Catalog) -> None:
    root = reduced.path
    query = queries(stored(reduced)[1], 1, seed=8)[0]
    before = [h.key for h in reduced.exact_search(query, k=5)]
    reduced.close()
    for tier in root.glob("tier-*"):
        tier.unlink()
    with Catalog.open(root, readonly=True) as readonly:  # no tier: every row is read, still exact
        assert readonly._core.tier is None
        assert [h.key for h in readonly.exact_search(query, k=5)] == before
        assert any("compact tier" in problem for problem in readonly.verify())
    with Catalog.open(root) as writable:
        assert writable._core.tier is not None and writable._core.tier_rows == ITEMS
        assert [h.key for h in writable.exact_search(query, k=5)] == before
        assert writable.verify() == []


def test_verify_reports_a_tier_whose_rows_no_longer_bound_their_vectors(reduced: Catalog) -> None:
    tier = reduced._core.tier
    assert tier is not None
    with tier.path.open("r+b") as handle:  # bit rot in row 100's residual norm
        handle.seek(4096 + 100 * tier.rows.row_bytes + tier.code_bytes)
        handle.write(np.float32(9.0).tobytes())
    assert any("1 row(s) of the compact tier" in problem for problem in reduced.verify())


def test_going_back_to_full_vectors_drops_the_tier(reduced: Catalog) -> None:
    reduced.reduce(None)
    assert reduced._core.tier is None and not list(reduced.path.glob("tier-*"))
    keys, matrix = stored(reduced)
    query = queries(matrix, 1, seed=2)[0]
    assert_true_top_k(reduced.exact_search(query, k=5), brute_force(keys, matrix, query), 5)


def test_check_measures_recall_against_the_bounded_exact_search(reduced: Catalog) -> None:
    report = reduced.check(k=5, sample=200)
    assert report.queries == 200 and report.recall >= 0.9 and report.reduced_dim == 64


def test_a_catalog_created_to_be_reduced_builds_no_full_dimension_graph(
    tmp_path: Path, small_model: Path, vectors: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writing, "REDUCE_AFTER", 1000)
    with Catalog.create(tmp_path / "planned", small_model, reduce_to=32) as catalog:
        full_graph = catalog._core.graph.index
        assert full_graph is not None and full_graph.dim == 2048
        catalog.add_many([f"item-{i}" for i in range(1500)], vectors[:1500])
        assert catalog.graph_dim == 32 and full_graph.slots == 0  # the batch never went into it
        assert catalog._core.graph.index is not None and catalog._core.graph.index.slots == 1500
        catalog.add_many([f"item-{i}" for i in range(1500, 2000)], vectors[1500:2000])
        assert catalog.search(vectors[1700], k=1)[0].key == "item-1700"
        assert catalog.verify() == []


def test_a_batch_that_stays_below_the_planned_size_goes_into_the_full_graph(
    tmp_path: Path, small_model: Path, vectors: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writing, "REDUCE_AFTER", 1000)
    with Catalog.create(tmp_path / "planned", small_model, reduce_to=32) as catalog:
        catalog.add_many([f"item-{i}" for i in range(600)], vectors[:600])
        catalog.add_many([f"item-{i}" for i in range(600)], vectors[600:1200])  # replaces: still 600
        assert catalog.reduction is None and len(catalog) == 600
        assert catalog.search(vectors[1100], k=1)[0].key == "item-500"
        assert catalog.verify() == []


def test_a_reduced_catalog_written_before_the_tier_gains_it_and_answers_as_before(tmp_path: Path) -> None:
    root = tmp_path / "reduced-float16"
    shutil.copytree(V3_CATALOGS / "reduced-float16", root)
    expected = json.loads((root / "expected.json").read_text())
    assert not list(root.glob("tier-*"))
    with Catalog.open(root) as catalog:
        assert len(catalog) == expected["items"] and catalog.reduction is not None
        assert catalog._core.tier is not None and catalog._core.tier_rows == catalog._core.rows
        for key, neighbours in expected["exact"].items():
            distance = catalog_distances(catalog, catalog.vector(key))
            assert_same_ranking(catalog.exact_search(key, k=5), neighbours, distance)
        bags = catalog.exact_search("p000/photo-0.jpg", k=5, filter={"category": "Bag"})
        assert_same_ranking(
            bags, expected["filtered"], catalog_distances(catalog, catalog.vector("p000/photo-0.jpg"))
        )
        assert catalog.verify() == []
    assert sorted(p.suffix for p in root.glob("tier-*")) == [".int8", ".npz"]  # the tier, its space


WRITER = """
import sys
import numpy as np
from fashionrec_onnx import Catalog
rng = np.random.default_rng(0)
with Catalog.open(sys.argv[1]) as catalog:
    for start in range(0, 100_000, 50):
        vectors = rng.normal(size=(50, 2048)).astype(np.float32)
        catalog.add_many([f"killed-{start + i}" for i in range(50)], vectors)
"""


def test_sigkill_while_writing_a_reduced_catalog_leaves_the_tier_in_step(reduced: Catalog) -> None:
    import subprocess
    import sys

    from killing import kill_when

    root = reduced.path
    assert reduced._core.tier is not None
    tier, row = reduced._core.tier.path, reduced._core.tier.rows.row_bytes
    reduced.close()
    process = subprocess.Popen([sys.executable, "-c", WRITER, str(root)])
    size = tier.stat().st_size
    kill_when(process, lambda: tier.stat().st_size >= size + 7 * 50 * row)  # some batches in
    with Catalog.open(root) as catalog:
        core = catalog._core
        assert core.tier_rows == core.rows and len(catalog) >= ITEMS + 300
        assert catalog.verify() == []
        keys, matrix = stored(catalog)
        for query in queries(matrix, 3, seed=12):
            assert_true_top_k(catalog.exact_search(query, k=5), brute_force(keys, matrix, query), 5)


# -- a filter's matches, kept until the next write ---------------------------------------------------


class CountingMasks:
    """Counts the filter masks a catalog builds and the tier rows it gathers (and does both)."""

    def __init__(self, catalog: Catalog) -> None:
        core = catalog._core
        self.columns, self.rows = core.columns, core.tier.rows if core.tier is not None else None
        self.masks = self.gathered = 0

    def __enter__(self) -> CountingMasks:
        mask, take = self.columns.mask, self.rows.take

        def counted_mask(*args):  # type: ignore[no-untyped-def]
            self.masks += 1
            return mask(*args)

        def counted_take(labels):  # type: ignore[no-untyped-def]
            self.gathered += len(labels)
            return take(labels)

        self.columns.mask, self.rows.take = counted_mask, counted_take
        return self

    def __exit__(self, *exc: object) -> None:
        del self.columns.mask, self.rows.take


def test_a_repeated_filter_is_worked_out_once_and_again_after_a_write(reduced: Catalog) -> None:
    keys, matrix = stored(reduced)
    shades = {f"item-{i:05d}": f"s{i % 50}" for i in range(ITEMS)}
    query = queries(matrix, 1, seed=40)[0]
    inside = [i for i, key in enumerate(keys) if shades[key] in ("s3", "s7")]
    with CountingMasks(reduced) as counted:
        for wanted in (["s3", "s7"], ["s7", "s3", "s7"], ("s3", "s7")):  # one filter, written three ways
            hits = reduced.search(query, k=5, filter={"shade": wanted})
            assert_true_top_k(hits, brute_force([keys[i] for i in inside], matrix[inside], query), 5)
        assert counted.masks == 1 and counted.gathered == len(inside)
        reduced.add("new", query, metadata={"shade": "s7"})  # a write: the next search sees it
        assert reduced.search(query, k=5, filter={"shade": ["s3", "s7"]})[0].key == "new"
        assert counted.masks == 2
        assert reduced.search(query, k=5, filter={"shade": "s3"})[0].key != "new"


def test_more_like_this_in_a_kept_filter_leaves_the_filter_whole(reduced: Catalog) -> None:
    key = "item-00101"  # half "1"
    vector = reduced.vector(key)
    assert key not in [h.key for h in reduced.more_like_this(key, k=5, filter={"half": "1"})]
    assert reduced.search(vector, k=5, filter={"half": "1"})[0].key == key


def test_the_kept_filters_are_few_and_short() -> None:
    cache = MatchCache(filters=3)
    built: list[str] = []

    def build(name: str) -> Callable[[], np.ndarray]:
        return lambda: built.append(name) or np.ones(10, bool)

    for name in ("a", "b", "c", "d", "a"):  # "a" was dropped for "d", the least recently used
        cache.get(0, {"f": name}, build(name))
    assert built == ["a", "b", "c", "d", "a"]
    cache.get(0, {"f": "d"}, build("d"))
    long = "x" * (LONGEST_KEY + 1)
    for _ in range(2):
        cache.get(0, {"f": long}, build("long"))
        cache.get(1, {"f": "d"}, build("d"))  # another generation: worked out again
    assert built == ["a", "b", "c", "d", "a", "long", "d", "long"]


def test_kept_filters_stay_within_their_budget_as_they_grow_and_others_gather_nothing_whole(
    reduced: Catalog,
) -> None:
    core = reduced._core
    assert core.tier is not None

    def mask_of(shade: str) -> Callable[[], np.ndarray]:
        return lambda: core.columns.mask({"shade": shade}, core.live_mask())

    masks_and_labels = ITEMS + 8 * (ITEMS // 50)  # a mask's bytes and its 60 labels'
    cache = MatchCache(budget=2 * masks_and_labels + 100)
    first = cache.get(0, {"shade": "s1"}, mask_of("s1"))
    second = cache.get(0, {"shade": "s2"}, mask_of("s2"))
    assert first.count == second.count == ITEMS // 50 and len(first.labels) + len(second.labels) == 120
    assert len(cache) == 2
    rows = second.tier_rows(core.tier, core.tier_rows)  # 60 gathered rows: over the budget
    assert rows is not None and np.array_equal(rows, core.tier.rows.take(second.labels))
    assert len(cache) == 1 and cache.get(0, {"shade": "s2"}, mask_of("never")) is second
    assert Matches(mask_of("s1")()).tier_rows(core.tier, core.tier_rows) is None  # kept by no cache
    assert second.without(second.labels[:1]).tier_rows(core.tier, core.tier_rows) is None


V4_CATALOGS = Path(__file__).parent / "data" / "v4-catalogs"


def test_a_tier_of_format_1_serves_read_only_and_is_widened_by_the_first_writable_open(
    tmp_path: Path,
) -> None:
    root = tmp_path / "reduced-float32"
    shutil.copytree(V4_CATALOGS / "reduced-float32", root)
    expected = json.loads((root / "expected.json").read_text())
    files = lambda: {p.name: p.read_bytes() for p in root.iterdir() if "sqlite-" not in p.name}  # noqa: E731
    before = files()
    with Catalog.open(root, readonly=True) as catalog:
        tier = catalog._core.tier
        assert tier is not None and tier.space is None and not tier.widened  # as it was written
        assert catalog._core.tier_rows == catalog._core.rows
        for key, neighbours in expected["exact"].items():
            distance = catalog_distances(catalog, catalog.vector(key))
            assert_same_ranking(catalog.exact_search(key, k=5), neighbours, distance)
            # what that version answered, near-ties aside (another CPU may sum them the other way)
            assert_same_ranking(catalog.search(key, k=5), expected["search"][key], distance)
        assert catalog.verify() == []
    assert files() == before
    with Catalog.open(root) as catalog:
        core = catalog._core
        assert core.tier is not None and core.tier.widened and core.tier.space is not None
        assert core.tier.pca.dim == 32 and core.tier.pca.extends(core.reduction)
        assert core.tier_rows == core.rows
        found_too = 0
        for key, neighbours in expected["exact"].items():
            distance = catalog_distances(catalog, catalog.vector(key))
            assert_same_ranking(catalog.exact_search(key, k=5), neighbours, distance)
            found_too += len({h.key for h in catalog.search(key, k=5)} & set(neighbours))
        assert found_too >= 0.95 * 5 * len(expected["exact"])
        bags = catalog.exact_search("p000/photo-0.jpg", k=5, filter={"category": "Bag"})
        assert_same_ranking(
            bags, expected["filtered"], catalog_distances(catalog, catalog.vector("p000/photo-0.jpg"))
        )
        assert catalog.verify() == []
    assert sorted(p.name for p in root.glob("tier-*")) == ["tier-pca-16-1-2.int8", "tier-pca-16-1-2.npz"]
    with Catalog.open(root, readonly=True) as catalog:  # and opens as it was left
        assert catalog._core.tier is not None and catalog._core.tier.widened


def widened_copy(tmp_path: Path) -> Path:
    """The v4 catalog, its tier remade in format 2 by a writable open."""
    root = tmp_path / "widened"
    shutil.copytree(V4_CATALOGS / "reduced-float32", root)
    Catalog.open(root).close()
    return root


def test_a_damaged_space_file_leaves_the_catalog_serving_and_is_rebuilt_on_a_writable_open(
    tmp_path: Path,
) -> None:
    root = widened_copy(tmp_path)
    expected = json.loads((root / "expected.json").read_text())
    space = root / "tier-pca-16-1-2.npz"
    space.write_bytes(space.read_bytes()[:1000])  # a truncated zip
    with Catalog.open(root, readonly=True) as catalog:
        assert catalog._core.tier is None  # the rows are read in full meanwhile
        for key, neighbours in expected["exact"].items():
            distance = catalog_distances(catalog, catalog.vector(key))
            assert_same_ranking(catalog.exact_search(key, k=5), neighbours, distance)
        assert any("compact tier" in problem for problem in catalog.verify())
    with Catalog.open(root) as catalog:
        assert catalog._core.tier is not None and catalog._core.tier.widened and catalog.verify() == []
    graph_pca = root / "pca-16-1.npz"
    graph_pca.write_bytes(graph_pca.read_bytes()[:1000])
    with pytest.raises(CatalogCorruptError, match="pca-16-1.npz"):
        Catalog.open(root, readonly=True)


def test_a_writable_open_removes_tier_files_a_crash_left_behind(tmp_path: Path) -> None:
    root = widened_copy(tmp_path)
    stray = root / "tier-pca-16-1.int8"  # as if killed between recording the new tier and this
    shutil.copyfile(V4_CATALOGS / "reduced-float32" / stray.name, stray)
    with Catalog.open(root, readonly=True):
        pass
    assert stray.exists()
    with Catalog.open(root) as catalog:
        assert catalog.verify() == []
    assert sorted(p.name for p in root.glob("tier-*")) == ["tier-pca-16-1-2.int8", "tier-pca-16-1-2.npz"]


def test_a_graph_too_wide_for_the_tier_header_has_no_tier_and_searches_exactly(
    tmp_path: Path, small_model: Path
) -> None:
    vectors = clustered(800, seed=9)
    with Catalog.create(tmp_path / "wide", small_model) as catalog:
        catalog.add_many([f"w-{i}" for i in range(800)], vectors)
        catalog.reduce(760)  # its scales overflowed the header: reduce raised ValueError
        assert MAX_GRAPH_DIM < 760
        assert catalog._core.tier is None and not list((tmp_path / "wide").glob("tier-*"))
        catalog.add_many(["w-extra"], vectors[:1])
        query = queries(vectors, 1, seed=2)[0]
        keys, matrix = stored(catalog)
        assert_true_top_k(catalog.exact_search(query, k=5), brute_force(keys, matrix, query), 5)
        assert catalog.verify() == []
