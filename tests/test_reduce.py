"""PCA reduction and float16 storage: saved without pickle, applied to queries, recall measured."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fashionrec_onnx import Catalog, CatalogCorruptError
from fashionrec_onnx.catalog.pca import PCA
from fashionrec_onnx.quality.datasets import SAMPLE_DIR


@pytest.fixture(scope="module")
def vectors(tmp_path_factory: pytest.TempPathFactory, small_model: Path) -> np.ndarray:
    from fashionrec_onnx import Embedder

    with Embedder(small_model) as embedder:
        return embedder.embed(sorted(SAMPLE_DIR.glob("*/*.png")))


@pytest.fixture()
def catalog(tmp_path: Path, small_model: Path, vectors: np.ndarray) -> Catalog:
    keys = [p.relative_to(SAMPLE_DIR).as_posix() for p in sorted(SAMPLE_DIR.glob("*/*.png"))]
    paths = [str(SAMPLE_DIR / key) for key in keys]
    catalog = Catalog.create(tmp_path / "catalog", small_model)
    catalog.add_many(keys, vectors, paths=paths, metadata=({"category": k.split("/")[0]} for k in keys))
    yield catalog
    catalog.close()


def test_pca_round_trips_through_an_npz_without_pickle(tmp_path: Path, vectors: np.ndarray) -> None:
    pca = PCA.fit(vectors, 32, whiten=True)
    pca.save(tmp_path / "pca.npz")
    loaded = PCA.load(tmp_path / "pca.npz")
    assert loaded.dim == 32 and loaded.whiten and loaded.input_dim == 2048
    np.testing.assert_allclose(loaded.transform(vectors[:5]), pca.transform(vectors[:5]), atol=1e-6)
    with np.load(tmp_path / "pca.npz", allow_pickle=False) as data:  # plain arrays only
        assert set(data.files) >= {"mean", "components", "scales"}


def test_pca_output_keeps_distances_within_its_space_and_most_variance(vectors: np.ndarray) -> None:
    """Format 2: the centred projection as it is, so L2 distances between projections are the
    full-space distances of the vectors' parts inside the PCA space (no re-normalisation)."""
    pca = PCA.fit(vectors, 64)
    reduced = pca.transform(vectors)
    assert reduced.shape == (len(vectors), 64) and not pca.normalise
    inside = (vectors[:20] - vectors[20:40]) @ pca.components.T
    np.testing.assert_allclose(
        np.linalg.norm(reduced[:20] - reduced[20:40], axis=1), np.linalg.norm(inside, axis=1), rtol=1e-4
    )
    assert 0.5 < pca.explained_variance_ratio <= 1.0


def test_a_format_1_pca_file_keeps_its_unit_length_projections(tmp_path: Path, vectors: np.ndarray) -> None:
    """Catalogs reduced by 0.2.0 keep the graph they built: their file says format 1."""
    pca = PCA.fit(vectors, 64)
    np.savez(
        tmp_path / "pca.npz", format=np.int64(1), mean=pca.mean, components=pca.components,
        scales=pca.scales, whiten=np.bool_(False), explained_variance_ratio=np.float64(0.9),
    )  # fmt: skip
    old = PCA.load(tmp_path / "pca.npz")
    assert old.normalise
    reduced = old.transform(vectors)
    np.testing.assert_allclose(np.linalg.norm(reduced, axis=1), 1.0, atol=1e-5)
    projected = pca.transform(vectors)
    np.testing.assert_allclose(reduced, projected / np.linalg.norm(projected, axis=1)[:, None], atol=1e-5)
    old.save(tmp_path / "again.npz")  # written back as it was read
    with np.load(tmp_path / "again.npz", allow_pickle=False) as data:
        assert int(data["format"]) == 1
    pca.save(tmp_path / "new.npz")
    with np.load(tmp_path / "new.npz", allow_pickle=False) as data:
        assert int(data["format"]) == 2


def test_a_corrupt_pca_file_names_itself(tmp_path: Path) -> None:
    (tmp_path / "pca.npz").write_bytes(b"garbage")
    with pytest.raises(CatalogCorruptError, match="pca.npz"):
        PCA.load(tmp_path / "pca.npz")


def test_reduced_catalog_projects_queries_and_reports_recall_in_both_spaces(catalog: Catalog) -> None:
    full_check = catalog.check(k=5, sample=300)
    catalog.reduce(64)
    assert catalog.graph_dim == 64 and catalog.reduction is not None
    query = SAMPLE_DIR / "bag" / "test-00598.png"
    hits = catalog.search(query, k=5)  # an image: embedded at 2048-d, projected automatically
    assert hits[0].key == "bag/test-00598.png" and hits[0].similarity == pytest.approx(1.0, abs=1e-5)
    assert catalog.search(catalog.vector("bag/test-00598.png"), k=1)[0].key == "bag/test-00598.png"
    exact = catalog.exact_search(query, k=5)  # the oracle stays in the full space
    assert len({h.key for h in hits} & {h.key for h in exact}) >= 4
    report = catalog.check(k=5, sample=300)
    assert report.reduced_dim == 64
    assert report.recall_reduced is not None and report.recall_reduced >= 0.99  # graph vs reduced exact
    assert report.recall >= 0.9  # after the full-vector rerank, against full exact search
    assert full_check.recall_reduced is None


def test_reduction_survives_reopening_and_can_be_undone(catalog: Catalog) -> None:
    catalog.reduce(32, whiten=True)
    before = [h.key for h in catalog.search(catalog.keys()[0], k=5)]
    catalog.close()
    with Catalog.open(catalog.path) as reopened:
        assert reopened.graph_dim == 32 and reopened.reduction.whiten
        assert [h.key for h in reopened.search(reopened.keys()[0], k=5)] == before
        assert reopened.verify() == []
        reopened.reduce(None)
        assert reopened.graph_dim == 2048 and not list(reopened.path.glob("pca-*.npz"))
        assert reopened.check(k=5, sample=200).recall >= 0.99


def test_float16_storage_halves_the_vectors_and_keeps_the_ranking(
    tmp_path: Path, small_model: Path, vectors: np.ndarray
) -> None:
    keys = [f"item-{i}" for i in range(len(vectors))]
    sizes = {}
    tops = {}
    for dtype in ("float32", "float16"):
        with Catalog.create(tmp_path / dtype, small_model, vector_dtype=dtype) as catalog:
            catalog.add_many(keys, vectors)
            tops[dtype] = [[h.key for h in catalog.exact_search(v, k=5)] for v in vectors[:100]]
            assert catalog.summary()["vector_dtype"] == dtype
            vector_file = tmp_path / dtype / catalog.summary()["vector_file"]
        sizes[dtype] = vector_file.stat().st_size
    assert sizes["float16"] < sizes["float32"] * 0.6
    overlap = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(tops["float32"], tops["float16"])])
    assert overlap >= 0.98


def test_another_open_catalog_takes_in_a_reduction_and_a_new_ef(catalog: Catalog) -> None:
    """A search service keeps the catalog open while an admin reduces it or tunes ef elsewhere."""
    with Catalog.open(catalog.path, readonly=True) as service:
        key = service.keys()[10]
        assert service.graph_dim == 2048
        catalog.reduce(64)
        assert [h.key for h in service.search(key, k=5)] == [h.key for h in catalog.search(key, k=5)]
        assert service.graph_dim == 64 and service.reduction is not None
        catalog.reduce(48)  # a refit under a new file name: noticed too
        service.search(key, k=5)
        assert service.graph_dim == 48
        catalog.set_ef(40)
        service.search(key, k=5)
        assert service.params.ef == 40
        catalog.reduce(None)
        assert [h.key for h in service.search(key, k=5)] == [h.key for h in catalog.search(key, k=5)]
        assert service.graph_dim == 2048 and service.verify() == []


def test_a_planned_reduction_is_fitted_once_enough_items_are_in(
    tmp_path: Path, small_model: Path, vectors: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fashionrec_onnx.catalog import writing

    monkeypatch.setattr(writing, "REDUCE_AFTER", 300)
    keys = [f"item-{i}" for i in range(len(vectors))]
    with Catalog.create(tmp_path / "planned", small_model, reduce_to=32) as catalog:
        catalog.add_many(keys[:200], vectors[:200])
        assert catalog.reduction is None and catalog.graph_dim == 2048
        catalog.add_many(keys[200:400], vectors[200:400])
        assert catalog.reduction is not None and catalog.graph_dim == 32
        catalog.add_many(keys[400:], vectors[400:])  # later items go into the small graph
        assert catalog.search(vectors[700], k=1)[0].key == "item-700"
    with Catalog.open(tmp_path / "planned") as reopened:
        assert reopened.graph_dim == 32 and reopened.verify() == []
