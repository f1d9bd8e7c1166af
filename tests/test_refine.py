"""`fashionrec refine`: a projection learned from the catalog's labels, written as one ONNX model of
the contract, and a refined catalog derived without re-embedding that searches like one indexed
with the refined model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fashionrec_onnx import BadArgumentError, Catalog, Embedder, read_model_info
from fashionrec_onnx.cli import main
from fashionrec_onnx.projection import refinement_of
from fashionrec_onnx.quality.refine_learning import Projection, learn_projection, split_held_out

DIM = 32


def run(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    code = main([str(arg) for arg in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory, small_model: Path, fashion_mnist_dir: Path) -> Path:
    """300 real Fashion-MNIST test images with their categories, indexed with the 64 px model."""
    catalog = tmp_path_factory.mktemp("refine") / "base"
    code = main(
        [
            "import-fashion-mnist", "--catalog", str(catalog), "--model", str(small_model),
            "--limit", "300", "--source", str(fashion_mnist_dir), "--quiet",
        ]
    )  # fmt: skip
    assert code == 0
    return catalog


@pytest.fixture(scope="module")
def refined(labelled: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The refined model and the catalog derived from the stored vectors."""
    folder = tmp_path_factory.mktemp("refined")
    model, derived = folder / "refined.onnx", folder / "derived"
    code = main(
        [
            "refine", "--catalog", str(labelled), "--label-field", "category", "--dim", str(DIM),
            "--epochs", "5", "--out", str(model), "--catalog-out", str(derived),
        ]
    )  # fmt: skip
    assert code == 0
    return model, derived


def test_refined_model_follows_the_contract_and_names_its_origin(
    refined: tuple[Path, Path], small_model: Path, labelled: Path
) -> None:
    model, _ = refined
    info, base = read_model_info(model), read_model_info(small_model)
    assert info.dim == DIM and info.input_size == base.input_size and info.precision == "fp32"
    assert info.fingerprint != base.fingerprint
    provenance = refinement_of(model)
    assert provenance["base_fingerprint"] == base.fingerprint
    assert provenance["label_field"] == "category"
    assert Path(provenance["catalog"]) == labelled.resolve()
    held_out = json.loads(provenance["held_out"])
    assert set(held_out["before"]) == set(held_out["after"]) == {"precision@5", "mAP@10"}
    with Embedder(model) as embedder:
        vectors = embedder.embed_pixels(np.zeros((2, info.input_size, info.input_size, 3), np.uint8), 2)
    assert vectors.shape == (2, DIM) and vectors.dtype == np.float32 and np.all(np.isfinite(vectors))


def test_refined_model_embeds_as_the_projection_of_the_base_embedding(
    refined: tuple[Path, Path], small_model: Path
) -> None:
    model, derived = refined
    with Catalog.open(derived, readonly=True) as catalog:
        keys = [catalog.keys()[i] for i in range(8)]
        stored = catalog.vectors(keys)
        paths = [catalog.image_path(key) for key in keys]
    with Embedder(model) as embedder:
        embedded = np.stack([embedder.embed_one(path) for path in paths])
    assert np.min(np.sum(stored * embedded, axis=1)) > 0.9999


def test_derived_catalog_searches_like_one_indexed_with_the_refined_model(
    refined: tuple[Path, Path], labelled: Path, tmp_path: Path
) -> None:
    model, derived = refined
    reindexed = tmp_path / "reindexed"
    images = labelled / "images"
    code = main(
        [
            "index", str(images), "--catalog", str(reindexed), "--model", str(model),
            "--metadata", str(images / "labels.csv"), "--quiet",
        ]
    )  # fmt: skip
    assert code == 0
    with Catalog.open(derived, readonly=True) as a, Catalog.open(reindexed, readonly=True) as b:
        assert len(a) == len(b) == 300 and sorted(a.keys()) == sorted(b.keys())
        for key in a.keys()[:40]:
            photo = a.image_path(key)
            first, second = a.exact_search(photo, k=6), b.exact_search(photo, k=6)
            if [h.key for h in first[:5]] != [h.key for h in second[:5]]:
                # only exact ties (equal similarity within float rounding) may swap places
                gaps = [abs(x.similarity - y.similarity) for x, y in zip(first, second)]
                assert max(gaps) < 1e-5, (key, first, second)
                assert {h.key for h in first[:4]} <= {h.key for h in second}


def test_derived_catalog_keeps_keys_paths_and_metadata(refined: tuple[Path, Path], labelled: Path) -> None:
    _, derived = refined
    with Catalog.open(labelled, readonly=True) as base, Catalog.open(derived, readonly=True) as copy:
        assert copy.info.fingerprint == read_model_info(refined[0]).fingerprint
        key = base.keys()[0]
        assert copy.get(key).metadata == base.get(key).metadata
        assert copy.get(key).path == base.get(key).path


def test_refine_prints_the_training_curve_and_scores(
    labelled: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(
        capsys, "refine", "--catalog", labelled, "--label-field", "category", "--dim", "16", "--epochs", "2",
        "--out", tmp_path / "r.onnx",
    )  # fmt: skip
    assert code == 0, err
    assert "held-out precision@5" in out and "<- kept" in out and "epoch" in out


def _catalog_with(tmp_path: Path, model: Path, labels: list[str]) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path / "few"
    with Catalog.create(path, model) as catalog:
        vectors = rng.normal(size=(len(labels), catalog.dim)).astype(np.float32)
        catalog.add_many(
            [f"k{i}" for i in range(len(labels))], vectors, metadata=[{"category": x} for x in labels]
        )
    return path


@pytest.mark.parametrize(
    "labels, needle",
    [
        (["dress"] * 20, "at least two"),
        (["dress", "dress", "bag", "bag", "coat", "coat"], "too few items per category"),
    ],
)
def test_refine_refuses_labels_that_cannot_teach(
    tmp_path: Path, small_model: Path, capsys: pytest.CaptureFixture[str], labels: list[str], needle: str
) -> None:
    catalog = _catalog_with(tmp_path, small_model, labels)
    out = tmp_path / "r.onnx"
    code, _, err = run(capsys, "refine", "--catalog", catalog, "--label-field", "category", "--out", out)
    assert code == 2 and "Traceback" not in err
    assert [line for line in err.splitlines() if "error:" in line and needle in line], err
    assert not out.exists()


def test_refine_refuses_a_field_no_item_has(
    tmp_path: Path, small_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    catalog = _catalog_with(tmp_path, small_model, ["a"] * 5 + ["b"] * 5)
    code, _, err = run(
        capsys, "refine", "--catalog", catalog, "--label-field", "colour", "--out", tmp_path / "r"
    )
    assert code == 2 and "no item has the metadata field 'colour'" in err


def _clusters(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit vectors of 8 classes x 15 products x 4 photos, hidden under a large common direction."""
    rng = np.random.default_rng(seed)
    classes = rng.normal(size=(8, 64))
    products = np.repeat(np.arange(120), 4)
    labels = products // 15
    product_centres = classes[labels[::4]] * 0.6 + rng.normal(size=(120, 64)) * 0.5
    x = product_centres[products] * 0.5 + rng.normal(size=(480, 64)) + 6.0 * rng.normal(size=(1, 64))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), labels, products


def test_learning_is_deterministic_with_a_seed_and_labels_beat_the_base() -> None:
    x, labels, products = _clusters()
    first, _ = learn_projection(x, labels, products, dim=16, epochs=6)
    second, _ = learn_projection(x, labels, products, dim=16, epochs=6)
    assert np.array_equal(first.matrix, second.matrix) and np.array_equal(first.mean, second.mean)
    _, report = learn_projection(x, labels, dim=16, epochs=6)
    assert report.after["precision@5"] > report.before["precision@5"] + 0.05
    assert report.curve[0].epoch == 0 and len(report.curve) >= 2


def test_whole_products_are_held_out() -> None:
    _, labels, products = _clusters()
    train, held = split_held_out(labels, products, 0.25, seed=3)
    assert not set(products[train]) & set(products[held])
    assert len(train) + len(held) == len(labels)


def test_projection_keeps_a_zero_row_finite() -> None:
    projection = Projection(np.zeros(4, np.float32), np.eye(4, 2, dtype=np.float32))
    assert np.all(np.isfinite(projection.apply(np.zeros((1, 4), np.float32))))


def test_dim_above_the_stored_dimension_is_refused() -> None:
    x, labels, _ = _clusters()
    with pytest.raises(BadArgumentError, match="dim must be"):
        learn_projection(x, labels, dim=65)


def test_int8_quantisation_of_a_refined_model_works(refined: tuple[Path, Path], tmp_path: Path) -> None:
    from fashionrec_export.quantize import quantize_int8

    model, _ = refined
    out = tmp_path / "refined-int8.onnx"
    info = quantize_int8(model, out, count=8)
    assert info.precision == "int8" and info.dim == DIM
    assert info.fingerprint != read_model_info(model).fingerprint
    assert refinement_of(out)["base_fingerprint"] == refinement_of(model)["base_fingerprint"]
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (4, info.input_size, info.input_size, 3), dtype=np.uint8)
    with Embedder(model) as fp32, Embedder(out) as int8:
        a, b = fp32.embed_pixels(pixels, 4), int8.embed_pixels(pixels, 4)
    assert b.shape == (4, DIM) and np.allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)
    assert np.median(np.sum(a * b, axis=1)) > 0.8


def test_a_refined_model_derives_another_catalog_of_its_base_model(
    refined: tuple[Path, Path], labelled: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, derived = refined
    target = tmp_path / "applied"
    code, out, err = run(capsys, "refine", "--catalog", labelled, "--model", model, "--catalog-out", target)
    assert code == 0, err
    with Catalog.open(derived, readonly=True) as a, Catalog.open(target, readonly=True) as b:
        keys = a.keys()[:50]
        assert np.array_equal(a.vectors(keys), b.vectors(keys))
    code, out, err = run(capsys, "evaluate", "--catalog", labelled, "--compare", target, "--queries", "50")
    assert code == 0, err
    assert "applied: random:seed=0" in out and "P@5" in out


def test_a_refined_model_refuses_a_catalog_of_another_model(
    refined: tuple[Path, Path], tmp_path: Path, test_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, _ = refined
    catalog = _catalog_with(tmp_path, test_model, ["a"] * 5 + ["b"] * 5)
    target = tmp_path / "x"
    code, _, err = run(capsys, "refine", "--catalog", catalog, "--model", model, "--catalog-out", target)
    assert code == 2 and "derive only catalogs of the model it was learned on" in err
    assert not (tmp_path / "x").exists()


def test_catalog_refine_is_the_command_as_a_method(
    labelled: Path, refined: tuple[Path, Path], tmp_path: Path
) -> None:
    """`Catalog.refine` (registered by `quality`, which the catalog does not import) learns what
    `fashionrec refine` learns: same seed, same model fingerprint."""
    out = tmp_path / "method.onnx"
    with Catalog.open(labelled, readonly=True) as catalog:
        report = catalog.refine("category", out, dim=DIM, epochs=5)
    assert report.model == out and out.is_file()
    assert read_model_info(out).fingerprint == read_model_info(refined[0]).fingerprint
