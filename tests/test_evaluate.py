"""Evaluate: precision@k and mAP@k of "more like this" on a labelled catalog, checked against a
plain computation over exact search written here."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from fashionrec_onnx import BadArgumentError, Catalog
from fashionrec_onnx.cli import main
from fashionrec_onnx.quality.datasets import SAMPLE_DIR
from fashionrec_onnx.quality.evaluate import evaluate, pixel_vectors

KS = (1, 3, 10)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory, small_model: Path) -> Catalog:
    """100 sample images (10 per category) with their category, and no products (the sample's
    ``product`` column is left out: the plain reference searches photos)."""
    folder = tmp_path_factory.mktemp("evaluate") / "images"
    for category in sorted(p for p in SAMPLE_DIR.iterdir() if p.is_dir()):
        (folder / category.name).mkdir(parents=True)
        for path in sorted(category.glob("*.png"))[:10]:
            shutil.copy(path, folder / category.name / path.name)
    catalog = Catalog.create(folder.parent / "catalog", small_model)
    with (SAMPLE_DIR / "labels.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    metadata = {row["key"]: {f: v for f, v in row.items() if f not in ("key", "product")} for row in rows}
    catalog.index_folder(folder, metadata=metadata, progress=False)
    yield catalog
    catalog.close()


def copy_of(catalog: Catalog, path: Path, keys: list[str] | None = None, **metadata_of) -> Catalog:
    """Another catalog of the same vectors and images (no re-embedding), float16 this time."""
    keys = keys if keys is not None else sorted(catalog.keys())
    items = [catalog.get(key) for key in keys]
    other = Catalog.create(path, catalog.embedder, vector_dtype="float16")
    metadata = [{**item.metadata, **{f: g(item) for f, g in metadata_of.items()}} for item in items]
    other.add_many(keys, catalog.vectors(keys), paths=[item.path for item in items], metadata=metadata)
    return other


def reference(
    vectors: np.ndarray, labels: list[str], groups: list[str] | None = None, ks: tuple[int, ...] = KS
) -> dict[str, float]:
    """precision@k and mAP@k the textbook way: every item against every other by Euclidean
    distance (exact), itself and its group left out; AP@k divides by min(k, items it could
    rightly find)."""
    groups = groups or [str(i) for i in range(len(labels))]
    distance = ((vectors[:, None, :] - vectors[None, :, :]) ** 2).sum(axis=2)
    results: dict[str, list[float]] = {f"{m}@{k}": [] for k in ks for m in ("precision", "mAP")}
    for query in range(len(labels)):
        others = [i for i in range(len(labels)) if groups[i] != groups[query]]
        ranked = sorted(others, key=lambda i: distance[query, i])
        relevant = [labels[i] == labels[query] for i in ranked]
        findable = sum(relevant)
        for k in ks:
            results[f"precision@{k}"].append(sum(relevant[:k]) / k)
            hits, total = 0, 0.0
            for rank, good in enumerate(relevant[:k], 1):
                if good:
                    hits += 1
                    total += hits / rank
            results[f"mAP@{k}"].append(total / min(k, findable) if findable else 0.0)
    return {name: float(np.mean(values)) for name, values in results.items()}


def figures(scores) -> dict[str, float]:
    return {
        **{f"precision@{k}": scores.precision[k] for k in KS},
        **{f"mAP@{k}": scores.map[k] for k in KS},
    }


def test_evaluate_equals_a_plain_reference_over_exact_search(labelled: Catalog) -> None:
    result = evaluate(labelled, "category", ks=KS, queries=None, baseline=False)
    keys = sorted(labelled.keys())
    assert result.query_keys == keys
    labels = [labelled.get(key).metadata["category"] for key in keys]
    expected = reference(labelled.vectors(keys), labels)
    assert figures(result.methods[0].scores) == pytest.approx(expected, abs=1e-9)


def test_per_label_figures_average_to_the_overall_ones(labelled: Catalog) -> None:
    scores = evaluate(labelled, "category", ks=KS, queries=None, baseline=False).methods[0].scores
    assert len(scores.by_label) == 10 and all(f["queries"] == 10 for f in scores.by_label.values())
    for k in KS:
        per_label = [figures[f"precision@{k}"] for figures in scores.by_label.values()]
        assert np.mean(per_label) == pytest.approx(scores.precision[k])
    assert sum(map(sum, scores.confusion)) == 100
    assert np.trace(np.asarray(scores.confusion)) / 100 == pytest.approx(scores.precision[1])


def test_a_whole_product_is_left_out_with_its_item(labelled: Catalog, tmp_path: Path) -> None:
    """Two photos of one product: finding the other photo is not finding a similar product."""
    keys = sorted(labelled.keys())
    product = {key: f"p{i // 2}" for i, key in enumerate(keys)}
    with copy_of(labelled, tmp_path / "products", product=lambda item: product[item.key]) as catalog:
        result = evaluate(catalog, "category", ks=KS, queries=None, baseline=False, exact=True)
        labels = [catalog.get(key).metadata["category"] for key in keys]
        expected = reference(catalog.vectors(keys), labels, [product[key] for key in keys])
    assert result.product_field == "product"
    assert figures(result.methods[0].scores) == pytest.approx(expected, abs=1e-9)


def test_the_baseline_is_exact_search_over_grey_thumbnails(labelled: Catalog) -> None:
    result = evaluate(labelled, "category", ks=KS, queries=None)
    pixels = result.methods[1]
    assert pixels.name == "raw pixels (baseline)" and pixels.scores.queries == 100
    keys = sorted(labelled.keys())
    labels = [labelled.get(key).metadata["category"] for key in keys]
    expected = reference(pixel_vectors([labelled.image_path(key) for key in keys]), labels)
    assert figures(pixels.scores) == pytest.approx(expected, abs=1e-9)


def test_queries_are_a_seeded_sample(labelled: Catalog) -> None:
    first = evaluate(labelled, "category", queries=30, baseline=False).query_keys
    assert len(first) == 30 and first == sorted(first)
    assert evaluate(labelled, "category", queries=30, baseline=False).query_keys == first
    assert evaluate(labelled, "category", queries=30, seed=1, baseline=False).query_keys != first


def test_a_missing_label_field_says_what_to_do(labelled: Catalog) -> None:
    with pytest.raises(BadArgumentError, match="has the metadata field 'colour'; index with --metadata"):
        evaluate(labelled, "colour")


# -- the command ------------------------------------------------------------------------------------


def run(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    code = main([str(arg) for arg in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_compare_reports_both_catalogs_on_the_same_keys(
    capsys: pytest.CaptureFixture[str], labelled: Catalog, tmp_path: Path
) -> None:
    keys = sorted(labelled.keys())
    held = keys[::3]  # the other catalog lacks two thirds of the items: only shared keys are asked
    copy_of(labelled, tmp_path / "float16", keys=held).close()
    out_dir = tmp_path / "report"
    code, out, err = run(
        capsys, "evaluate", "--catalog", labelled.path, "--compare", tmp_path / "float16",
        "-k", "1,5", "--out", out_dir,
    )  # fmt: skip
    assert code == 0, err
    report = json.loads((out_dir / "evaluation.json").read_text())
    assert report["query_keys"] == held
    names = [method["name"] for method in report["methods"]]
    assert names == ["catalog", "raw pixels (baseline)", "float16"]
    assert all(method["queries"] == len(held) for method in report["methods"])
    assert "float16 vectors" in report["methods"][2]["description"]
    for name in names:
        assert name in out and name in (out_dir / "report.md").read_text()
    assert "P@1" in out and "mAP@5" in out and "precision@5 by label" in out
    for plot in ("precision-by-label.png", "confusion.png", "summary.png"):
        assert (out_dir / plot).read_bytes().startswith(b"\x89PNG")


def test_cli_evaluate_without_the_label_field_is_one_error_line(
    capsys: pytest.CaptureFixture[str], labelled: Catalog
) -> None:
    code, out, err = run(capsys, "evaluate", "--catalog", labelled.path, "--label-field", "colour")
    assert code == 2 and out == ""
    assert [line for line in err.splitlines() if line.startswith("error:")] == [err.strip()]
