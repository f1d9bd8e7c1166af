"""Vectors files in and out of catalogs: round trips, incremental imports, refusals, kill -9."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from fashionrec_onnx import Catalog, ModelMismatchError
from fashionrec_onnx.cli import main
from fashionrec_onnx.interchange import vector_files as vf
from fashionrec_onnx.interchange.vector_transfer import export_vectors, import_vectors
from fashionrec_onnx.quality.datasets import SAMPLE_DIR

LABELS = SAMPLE_DIR / "labels.csv"


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory, small_model: Path) -> Catalog:
    """40 sample images (4 per category) indexed with their labels, read by every test."""
    folder = tmp_path_factory.mktemp("images")
    for category in sorted(p for p in SAMPLE_DIR.iterdir() if p.is_dir()):
        for path in sorted(category.glob("*.png"))[:4]:
            (folder / category.name).mkdir(exist_ok=True)
            shutil.copyfile(path, folder / category.name / path.name)
    catalog = Catalog.create(tmp_path_factory.mktemp("indexed") / "catalog", small_model)
    catalog.index_folder(folder, metadata=LABELS, progress=False)
    yield catalog
    catalog.close()


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, indexed: Catalog) -> Path:
    out = tmp_path_factory.mktemp("exported") / "vectors"
    export_vectors(indexed, out)
    return out


def stored(catalog: Catalog) -> dict[str, tuple[str | None, dict, np.ndarray]]:
    return {item.key: (item.path, item.metadata, catalog.vector(item.key)) for item in catalog.items()}


def test_export_then_import_keeps_every_key_path_and_metadata(
    tmp_path: Path, small_model: Path, indexed: Catalog, exported: Path
) -> None:
    with Catalog.create(tmp_path / "copy", small_model) as copy:
        report = import_vectors(copy, exported)
        assert (report.added, report.updated, report.unchanged, report.skipped) == (40, 0, 0, [])
        before, after = stored(indexed), stored(copy)
    assert {k: v[:2] for k, v in after.items()} == {k: v[:2] for k, v in before.items()}
    for key, (_, _, vector) in before.items():
        np.testing.assert_allclose(after[key][2], vector, rtol=0, atol=1e-7)


def test_export_then_import_round_trips_vectors_bit_for_bit(
    tmp_path: Path, small_model: Path, indexed: Catalog, exported: Path
) -> None:
    with Catalog.create(tmp_path / "copy", small_model) as copy:
        import_vectors(copy, exported)
        after = stored(copy)
    for key, (_, _, vector) in stored(indexed).items():
        np.testing.assert_array_equal(after[key][2], vector)


def test_export_writes_the_items_change_markers(indexed: Catalog, exported: Path) -> None:
    table = pq.read_table(exported)
    item = indexed.get(table.column("key")[0].as_py())
    assert (table.column("size")[0].as_py(), table.column("mtime_ns")[0].as_py()) == (
        item.size,
        item.mtime_ns,
    )


def test_export_splits_a_large_catalog_into_files_of_at_most_rows_per_file(
    indexed: Catalog, tmp_path: Path
) -> None:
    report = export_vectors(indexed, tmp_path / "v", rows_per_file=15, batch_size=4)
    rows = [info.rows for info in vf.inspect(tmp_path / "v")]
    assert rows == [12, 12, 12, 4] and report.rows == 40 and len(report.files) == 4
    assert [k for b in vf.read_batches(tmp_path / "v") for k in b.keys] == indexed.keys()


def test_importing_the_same_vectors_again_changes_nothing(
    tmp_path: Path, small_model: Path, exported: Path
) -> None:
    with Catalog.create(tmp_path / "copy", small_model) as copy:
        import_vectors(copy, exported)
        report = import_vectors(copy, exported)
    assert (report.added, report.updated, report.unchanged) == (0, 0, 40)


def test_a_changed_vector_is_updated(
    tmp_path: Path, small_model: Path, indexed: Catalog, exported: Path
) -> None:
    key = indexed.keys()[0]
    new_vector = -indexed.vector(key)
    changed = tmp_path / "changed"
    vf.write_file(
        changed / "one.parquet",
        vf.build_table(indexed.dim, indexed.info.fingerprint, keys=[key], vectors=new_vector[None]),
    )
    with Catalog.create(tmp_path / "copy", small_model) as copy:
        import_vectors(copy, exported)
        report = import_vectors(copy, changed)
        assert (report.added, report.updated, report.unchanged) == (0, 1, 0)
        np.testing.assert_allclose(copy.vector(key), new_vector, atol=1e-7)
        assert len(copy) == 40


def test_vectors_of_another_model_are_refused_and_nothing_is_written(
    tmp_path: Path, test_model: Path, exported: Path
) -> None:
    with Catalog.create(tmp_path / "other", test_model) as other:
        with pytest.raises(ModelMismatchError, match="part-00000.parquet holds 2048-d vectors of model"):
            import_vectors(other, exported)
        assert len(other) == 0


def test_error_rows_are_listed_as_skipped(tmp_path: Path, small_model: Path, indexed: Catalog) -> None:
    folder = tmp_path / "vectors"
    vf.write_file(
        folder / "a.parquet",
        vf.build_table(
            indexed.dim, indexed.info.fingerprint, keys=["good.png", "broken.png"],
            vectors=np.stack([indexed.vector(indexed.keys()[0])] * 2), valid=np.array([True, False]),
            errors=[None, "truncated image data"],
        ),
    )  # fmt: skip
    with Catalog.create(tmp_path / "copy", small_model) as copy:
        report = import_vectors(copy, folder)
        assert report.skipped == [("broken.png", "truncated image data")]
        assert copy.keys() == ["good.png"]


IMPORTER = textwrap.dedent(
    """
    import logging, sys
    from fashionrec_onnx import Catalog
    from fashionrec_onnx.interchange.vector_transfer import import_vectors
    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr, format="%(message)s")
    with Catalog.open(sys.argv[1]) as catalog:
        import_vectors(catalog, sys.argv[2], batch_size=int(sys.argv[3]))
    """
)


def test_import_killed_with_sigkill_and_run_again_holds_every_row_once(
    tmp_path: Path, small_model: Path, indexed: Catalog
) -> None:
    count, batch = 3000, 50
    keys = [f"item-{i:05d}" for i in range(count)]
    vectors = np.random.default_rng(0).normal(size=(count, indexed.dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    folder = tmp_path / "vectors"
    vf.write_file(
        folder / "a.parquet",
        vf.build_table(indexed.dim, indexed.info.fingerprint, keys=keys, vectors=vectors),
    )
    Catalog.create(tmp_path / "catalog", small_model, M=8, ef_construction=40).close()
    process = subprocess.Popen(
        [sys.executable, "-c", IMPORTER, str(tmp_path / "catalog"), str(folder), str(batch)],
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    try:
        commits = 0
        while commits < 2:  # kill after two committed batches, in the middle of the run
            line = process.stderr.readline()
            assert line, "the importer ended before it could be killed"
            assert time.monotonic() < deadline, "the importer made no progress"
            commits += line.startswith("committed")
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL

    with Catalog.open(tmp_path / "catalog") as catalog:
        survived = len(catalog)
        assert 2 * batch <= survived < count and survived % batch == 0  # whole batches only
        report = import_vectors(catalog, folder, batch_size=batch)
        assert (report.unchanged, report.added) == (survived, count - survived)
        assert sorted(catalog.keys()) == keys
        np.testing.assert_allclose(catalog.vector(keys[-1]), vectors[-1], atol=1e-6)


def test_cli_exports_and_imports_vectors(tmp_path: Path, small_model: Path, indexed: Catalog, capsys) -> None:
    out = tmp_path / "vectors"
    assert main(["export-vectors", "--catalog", str(indexed.path), "--out", str(out)]) == 0
    assert "exported 40 vectors" in capsys.readouterr().out
    args = ["import", str(out), "--catalog", str(tmp_path / "copy"), "--model", str(small_model), "--quiet"]
    assert main(args) == 0
    assert "40 added, 0 updated, 0 unchanged, 0 skipped" in capsys.readouterr().out
    assert main(args) == 0
    assert "0 added, 0 updated, 40 unchanged" in capsys.readouterr().out


def test_cli_import_without_a_model_into_a_new_catalog_is_one_line_error(
    tmp_path: Path, exported: Path, capsys
) -> None:
    assert main(["import", str(exported), "--catalog", str(tmp_path / "new"), "--quiet"]) == 2
    assert capsys.readouterr().err.startswith("error: no catalog at")


def test_cli_import_into_a_new_catalog_takes_the_options_of_index(
    tmp_path: Path, small_model: Path, exported: Path
) -> None:
    from fashionrec_onnx.cli import main

    new = tmp_path / "half"
    args = ["import", str(exported), "--catalog", str(new), "--model", str(small_model)]
    assert main([*args, "--vector-dtype", "float16", "--ef", "64", "--quiet"]) == 0
    with Catalog.open(new) as catalog:
        assert len(catalog) == 40 and catalog.summary()["vector_dtype"] == "float16"
        assert catalog.params.ef == 64


# -- the product field travels with the vectors ------------------------------------------------


@pytest.fixture()
def product_catalog(tmp_path: Path, small_model: Path, indexed: Catalog) -> Catalog:
    """A copy of ``indexed`` grouped by the sample's ``product`` field."""
    catalog = Catalog.create(tmp_path / "products", small_model, product_field="product")
    import_vectors(catalog, _export(indexed, tmp_path / "plain"))
    yield catalog
    catalog.close()


def _export(catalog: Catalog, out: Path) -> Path:
    export_vectors(catalog, out)
    return out


def test_export_then_import_into_a_new_catalog_keeps_the_product_field(
    tmp_path: Path, small_model: Path, product_catalog: Catalog
) -> None:
    out = _export(product_catalog, tmp_path / "vectors")
    assert all(info.product_field == "product" for info in vf.inspect(out))
    with Catalog.create(tmp_path / "copy", small_model) as copy:
        report = import_vectors(copy, out)
        assert report.product_field == "product" and copy.product_field == "product"
        hits = copy.search("dress/test-00013.png", k=3, group_by="product")
        assert len({hit.product for hit in hits}) == 3


def test_import_into_a_catalog_with_another_product_field_keeps_its_own(
    tmp_path: Path, small_model: Path, product_catalog: Catalog
) -> None:
    out = _export(product_catalog, tmp_path / "vectors")
    with Catalog.create(tmp_path / "copy", small_model, product_field="category") as copy:
        assert import_vectors(copy, out).product_field is None and copy.product_field == "category"


def test_files_of_a_catalog_without_products_name_no_product_field(exported: Path) -> None:
    assert [info.product_field for info in vf.inspect(exported)] == [None]
    assert vf.META_PRODUCT_FIELD not in pq.read_schema(next(exported.glob("*.parquet"))).metadata


def test_cli_import_says_it_took_the_product_field_and_info_shows_it(
    tmp_path: Path, small_model: Path, product_catalog: Catalog, capsys
) -> None:
    out = tmp_path / "vectors"
    assert main(["export-vectors", "--catalog", str(product_catalog.path), "--out", str(out)]) == 0
    copy = str(tmp_path / "copy")
    assert main(["import", str(out), "--catalog", copy, "--model", str(small_model), "--quiet"]) == 0
    assert "product field 'product'" in capsys.readouterr().out
    assert main(["info", "--catalog", copy, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["product_field"] == "product" and info["reduce_to"] is None


def test_info_shows_a_planned_pca_until_it_is_fitted(tmp_path: Path, small_model: Path, capsys) -> None:
    Catalog.create(tmp_path / "big", small_model, reduce_to=64).close()
    assert main(["info", "--catalog", str(tmp_path / "big"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["reduce_to"] == 64 and info["reduction"] is None and info["product_field"] is None
    assert main(["info", "--catalog", str(tmp_path / "big")]) == 0
    assert "reduce_to: 64 (planned: a PCA graph fitted once 20,000 items are in)" in capsys.readouterr().out


def test_cli_import_of_a_missing_folder_leaves_no_catalog_behind(
    tmp_path: Path, small_model: Path, capsys
) -> None:
    args = ["import", str(tmp_path / "no-such-folder"), "--catalog", str(tmp_path / "new")]
    assert main([*args, "--model", str(small_model)]) == 2
    assert "no-such-folder does not exist" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_cli_import_with_a_model_of_other_vectors_leaves_no_catalog_behind(
    tmp_path: Path, test_model: Path, exported: Path, capsys
) -> None:
    args = ["import", str(exported), "--catalog", str(tmp_path / "new"), "--model", str(test_model)]
    assert main(args) == 2
    assert "holds 2048-d vectors of model" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_import_help_offers_no_model_run_options() -> None:
    from fashionrec_onnx.cli import build_parser

    parser = build_parser()
    text = parser._subparsers._group_actions[0].choices["import"].format_help()  # type: ignore[union-attr]
    assert "--batch-size" not in text and "--threads" not in text and "--reduce" in text
