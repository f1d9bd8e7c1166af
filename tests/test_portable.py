"""A catalog directory moves to another place (a server) and keeps working, with its model."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from oracle import assert_same_ranking, catalog_distances

from fashionrec_onnx.catalog import Catalog
from fashionrec_onnx.catalog.portable import copy_model_into
from fashionrec_onnx.errors import ModelError
from fashionrec_onnx.quality.datasets import SAMPLE_DIR

FASHIONREC = str(Path(sys.executable).with_name("fashionrec"))
DATA = Path(__file__).parent / "data"  # catalogs of 0.1.0 (v1), of format 2 (absolute model path)
QUERY = SAMPLE_DIR / "bag" / sorted(p.name for p in (SAMPLE_DIR / "bag").glob("*.png"))[0]


def images(target: Path, count: int = 8) -> Path:
    for category in ("bag", "dress"):
        (target / category).mkdir(parents=True)
        for source in sorted((SAMPLE_DIR / category).glob("*.png"))[:count]:
            shutil.copyfile(source, target / category / source.name)
    return target


def recorded_model(catalog: Path) -> str:
    with sqlite3.connect(catalog / "catalog.sqlite") as db:
        return db.execute("SELECT value FROM settings WHERE name = 'model_path'").fetchone()[0]


def test_index_copy_model_makes_a_directory_that_searches_photos_after_a_move(tmp_path, small_model) -> None:
    result = subprocess.run(
        [FASHIONREC, "index", images(tmp_path / "images"), "--catalog", tmp_path / "catalog"]
        + ["--model", small_model, "--copy-model", "--quiet"],
        capture_output=True,
        text=True,
        env=os.environ,
    )
    assert result.returncode == 0, result.stderr
    assert recorded_model(tmp_path / "catalog") == "model.onnx"
    moved = shutil.move(tmp_path / "catalog", tmp_path / "server" / "catalog")
    with Catalog.open(moved) as catalog:
        assert catalog.model_path == Path(moved, "model.onnx").resolve()
        assert catalog.search(QUERY, k=1)[0].key == f"bag/{QUERY.name}"


def test_copy_model_without_a_model_is_one_line_error(tmp_path) -> None:
    result = subprocess.run(
        [FASHIONREC, "index", images(tmp_path / "images"), "--catalog", tmp_path / "c", "--copy-model"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and result.stderr.startswith("error: --copy-model")


def test_a_model_copied_into_the_directory_is_recorded_relative_to_it(tmp_path, small_model) -> None:
    root = tmp_path / "catalog"
    with Catalog.create(root, copy_model_into(root, small_model)) as catalog:
        catalog.index_folder(images(tmp_path / "images"), progress=False)
    assert recorded_model(root) == "model.onnx"
    assert copy_model_into(root, small_model) == (root / "model.onnx").resolve()  # kept, not copied again


def test_an_older_catalog_moved_with_a_model_onnx_beside_it_finds_that_model(tmp_path, small_model) -> None:
    model = shutil.copyfile(small_model, tmp_path / "elsewhere.onnx")
    with Catalog.create(tmp_path / "catalog", model) as catalog:  # records the absolute path
        catalog.index_folder(images(tmp_path / "images"), progress=False)
    moved = shutil.move(tmp_path / "catalog", tmp_path / "server")
    shutil.move(model, Path(moved, "model.onnx"))
    with Catalog.open(moved) as catalog:
        assert catalog.search(QUERY, k=1)[0].key == f"bag/{QUERY.name}"


def test_a_moved_catalog_without_its_model_searches_keys_and_asks_for_it(tmp_path, small_model) -> None:
    model = shutil.copyfile(small_model, tmp_path / "model-outside.onnx")
    with Catalog.create(tmp_path / "catalog", model) as catalog:
        catalog.index_folder(images(tmp_path / "images"), progress=False)
    moved = shutil.move(tmp_path / "catalog", tmp_path / "server")
    (tmp_path / "models").mkdir()
    new_model = shutil.move(model, tmp_path / "models" / "m.onnx")
    with Catalog.open(moved) as catalog:
        assert len(catalog.more_like_this(f"bag/{QUERY.name}", k=3)) == 3
        with pytest.raises(ModelError, match="--model"):
            catalog.search(QUERY, k=1)
    with Catalog.open(moved, new_model) as catalog:
        assert catalog.search(QUERY, k=1)[0].key == f"bag/{QUERY.name}"


@pytest.mark.parametrize("written_by", ["v1-catalogs", "v2-catalogs"])
def test_a_catalog_of_an_earlier_version_moved_elsewhere_still_opens(
    tmp_path, small_model, written_by
) -> None:
    root = tmp_path / "moved" / "catalog"
    shutil.copytree(DATA / written_by / "float32", root)
    expected = json.loads((root / "expected.json").read_text())
    copy_model_into(root, small_model)
    with Catalog.open(root) as catalog:
        key = next(iter(expected["exact"]))
        hits = catalog.exact_search(key, k=5)
        assert_same_ranking(hits, expected["exact"][key], catalog_distances(catalog, catalog.vector(key)))
        assert len(catalog.search(QUERY, k=3)) == 3
