"""One version, written in one place: the package, the installed metadata, `fashionrec --version`,
the changelog, and the catalogs it writes."""

from __future__ import annotations

import importlib.metadata
import re
import sqlite3
from pathlib import Path

import numpy as np

import fashionrec_onnx
from fashionrec_onnx import Catalog
from fashionrec_onnx.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_the_version_is_0_2_0():
    assert fashionrec_onnx.__version__ == "0.2.0"


def test_the_installed_metadata_carries_the_package_version():
    assert importlib.metadata.version("fashionrec-onnx") == fashionrec_onnx.__version__


def test_fashionrec_version_prints_it(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"fashionrec-onnx {fashionrec_onnx.__version__}"


def test_the_changelog_s_latest_release_is_this_version():
    releases = re.findall(r"^## \[?(\d+\.\d+\.\d+)\]?", (ROOT / "CHANGELOG.md").read_text(), re.MULTILINE)
    assert releases[0] == fashionrec_onnx.__version__
    assert "0.1.0" in releases


def _vectors(n: int, dim: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_a_new_catalog_records_the_version_that_wrote_it(tmp_path, small_model):
    with Catalog.create(tmp_path / "c", small_model) as catalog:
        summary = catalog.summary()
    assert summary["created_by"] == fashionrec_onnx.__version__
    assert summary["written_by"] == fashionrec_onnx.__version__


def test_a_catalog_made_before_0_2_opens_and_records_the_version_that_writes_it(tmp_path, small_model):
    path = tmp_path / "c"
    with Catalog.create(path, small_model) as catalog:
        catalog.add_many(["a", "b"], _vectors(2, catalog.dim))
    with sqlite3.connect(path / "catalog.sqlite") as db:  # as a catalog written before 0.2.0 is
        db.execute("DELETE FROM settings WHERE name LIKE 'version.%'")
    with Catalog.open(path, readonly=True) as catalog:
        assert catalog.summary()["created_by"] is None
        assert catalog.summary()["written_by"] is None
        generation = catalog.generation
    with Catalog.open(path) as catalog:
        assert catalog.summary()["written_by"] == fashionrec_onnx.__version__
        assert catalog.summary()["created_by"] is None  # not known, so not made up
        assert catalog.generation == generation  # recording the version changed no item
