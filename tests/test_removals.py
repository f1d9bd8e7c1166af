"""Removals stick: a key removed with `remove` is not brought back by indexing its folder again,
until asked (``readd_removed=True``, `--include-removed`) or added explicitly."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from oracle import assert_same_ranking, catalog_distances
from PIL import Image

from fashionrec_onnx import Catalog
from fashionrec_onnx.cli import main

V2_CATALOGS = Path(__file__).parent / "data" / "v2-catalogs"


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    """Six small distinct photos in two subfolders."""
    root = tmp_path / "images"
    rng = np.random.default_rng(0)
    for i in range(6):
        (root / f"shop-{i % 2}").mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"shop-{i % 2}" / f"photo-{i}.png")
    return root


@pytest.fixture()
def catalog(tmp_path: Path, small_model: Path, folder: Path) -> Catalog:
    catalog = Catalog.create(tmp_path / "catalog", small_model)
    catalog.index_folder(folder, progress=False)
    yield catalog
    catalog.close()


def test_a_removed_key_is_not_added_back_by_the_next_index(catalog: Catalog, folder: Path) -> None:
    catalog.remove("shop-0/photo-0.png")
    report = catalog.index_folder(folder, progress=False)
    assert report.skipped_removed == 1 and report.added == 0 and report.unchanged == 5
    assert "shop-0/photo-0.png" not in catalog and len(catalog) == 5


def test_index_with_readd_removed_adds_it_back_and_forgets_the_removal(
    catalog: Catalog, folder: Path
) -> None:
    catalog.remove("shop-0/photo-0.png")
    report = catalog.index_folder(folder, progress=False, readd_removed=True)
    assert report.added == 1 and report.skipped_removed == 0
    assert "shop-0/photo-0.png" in catalog and catalog.removed_keys() == []


def test_an_explicit_add_of_a_removed_key_lifts_the_removal(catalog: Catalog, folder: Path) -> None:
    catalog.remove("shop-0/photo-0.png", "shop-1/photo-1.png")
    catalog.add("shop-0/photo-0.png", folder / "shop-0" / "photo-0.png")
    catalog.add_many(["shop-1/photo-1.png"], np.ones((1, catalog.dim), np.float32))
    assert catalog.removed_keys() == []


def test_removing_an_unknown_key_remembers_nothing(catalog: Catalog) -> None:
    assert catalog.remove("no-such-key") == 0
    assert catalog.removed_keys() == []


def test_items_pruned_because_their_file_went_come_back_with_the_file(catalog: Catalog, folder: Path) -> None:
    photo = folder / "shop-0" / "photo-0.png"
    kept = photo.read_bytes()
    photo.unlink()
    assert catalog.index_folder(folder, progress=False, prune=True).removed == 1
    photo.write_bytes(kept)
    assert catalog.index_folder(folder, progress=False).added == 1
    assert catalog.removed_keys() == []


def test_removals_are_remembered_across_processes(catalog: Catalog, folder: Path) -> None:
    catalog.remove("shop-1/photo-3.png")
    with Catalog.open(catalog.path) as other:
        assert other.index_folder(folder, progress=False).skipped_removed == 1
        assert other.removed_keys() == ["shop-1/photo-3.png"]


def test_cli_index_after_remove_says_what_it_left_out_and_how_to_add_it_back(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, small_model: Path, folder: Path
) -> None:
    index = ["index", str(folder), "--catalog", str(tmp_path / "c"), "--model", str(small_model), "--quiet"]
    assert main(index) == 0
    assert main(["remove", "shop-0/photo-2.png", "--catalog", str(tmp_path / "c")]) == 0
    capsys.readouterr()
    assert main(index) == 0
    out = capsys.readouterr().out
    assert "0 added" in out
    assert "left out 1 files whose keys were removed with `fashionrec remove` (--include-removed" in out
    assert main([*index, "--include-removed"]) == 0
    assert "1 added" in capsys.readouterr().out


def test_index_with_readd_removed_brings_the_item_back_with_its_metadata(
    tmp_path: Path, small_model: Path, folder: Path
) -> None:
    labels = {f"shop-{i % 2}/photo-{i}.png": {"category": "Dress" if i % 2 else "Bag"} for i in range(6)}
    with Catalog.create(tmp_path / "c", small_model) as catalog:
        catalog.index_folder(folder, metadata=labels, progress=False)
        catalog.remove("shop-1/photo-3.png")
        catalog.index_folder(folder, progress=False, readd_removed=True)  # no metadata given
        assert catalog.get("shop-1/photo-3.png").metadata == {"category": "Dress"}
        found = catalog.search("shop-1/photo-1.png", k=6, filter={"category": "Dress"})
        assert "shop-1/photo-3.png" in [hit.key for hit in found]
        assert catalog.removed_keys() == []


def test_metadata_given_when_readding_wins_over_the_remembered_metadata(
    tmp_path: Path, small_model: Path, folder: Path
) -> None:
    with Catalog.create(tmp_path / "c", small_model) as catalog:
        catalog.index_folder(folder, metadata={"shop-0/photo-0.png": {"category": "Bag"}}, progress=False)
        catalog.remove("shop-0/photo-0.png")
        new = {"shop-0/photo-0.png": {"category": "Coat"}}
        catalog.index_folder(folder, metadata=new, progress=False, readd_removed=True)
        assert catalog.get("shop-0/photo-0.png").metadata == {"category": "Coat"}


def test_cli_include_removed_restores_the_metadata_so_a_filter_finds_the_item(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, small_model: Path, folder: Path
) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text("key,category\n" + "".join(f"shop-{i % 2}/photo-{i}.png,Shirt\n" for i in range(6)))
    catalog = str(tmp_path / "c")
    index = ["index", str(folder), "--catalog", catalog, "--model", str(small_model), "--quiet"]
    assert main([*index, "--metadata", str(labels)]) == 0
    assert main(["remove", "shop-0/photo-2.png", "--catalog", catalog]) == 0
    assert main([*index, "--include-removed"]) == 0
    capsys.readouterr()
    search = ["search", "shop-0/photo-0.png", "--catalog", catalog, "-k", "6", "--filter", "category=Shirt"]
    assert main([*search, "--json"]) == 0
    assert "shop-0/photo-2.png" in capsys.readouterr().out


def test_removals_of_the_previous_layout_gain_the_metadata_column_and_come_back_without_metadata(
    tmp_path: Path, small_model: Path, folder: Path
) -> None:
    with Catalog.create(tmp_path / "c", small_model) as catalog:
        catalog.index_folder(folder, metadata={"shop-0/photo-0.png": {"category": "Bag"}}, progress=False)
        catalog.remove("shop-0/photo-0.png")
    with sqlite3.connect(tmp_path / "c" / "catalog.sqlite") as db:  # as 0.2 wrote it: no metadata column
        db.execute("DROP TABLE removed_keys")
        db.execute("CREATE TABLE removed_keys (key TEXT PRIMARY KEY, removed_at REAL NOT NULL) WITHOUT ROWID")
        db.execute("INSERT INTO removed_keys VALUES ('shop-0/photo-0.png', 1.0)")
    with Catalog.open(tmp_path / "c", readonly=True) as catalog:
        assert catalog.removed_keys() == ["shop-0/photo-0.png"]
    with Catalog.open(tmp_path / "c") as catalog:
        catalog.remove("shop-1/photo-1.png")  # remembered with its metadata in the new column
        report = catalog.index_folder(folder, progress=False, readd_removed=True)
        assert report.added == 2 and catalog.get("shop-0/photo-0.png").metadata == {}
    with sqlite3.connect(tmp_path / "c" / "catalog.sqlite") as db:
        assert "metadata" in [row[1] for row in db.execute("PRAGMA table_info(removed_keys)")]


# -- catalogs written before removals were remembered (schema 2 without the table) -----------


@pytest.fixture()
def v2_catalog(tmp_path: Path) -> Path:
    root = tmp_path / "v2"
    shutil.copytree(V2_CATALOGS / "float32", root)
    return root


def test_a_schema_2_catalog_opens_answers_as_before_and_is_upgraded_to_schema_3(v2_catalog: Path) -> None:
    expected = json.loads((v2_catalog / "expected.json").read_text())
    with Catalog.open(v2_catalog) as catalog:
        assert len(catalog) == expected["items"] and catalog.removed_keys() == []
        for key, neighbours in expected["exact"].items():
            distance = catalog_distances(catalog, catalog.vector(key))
            assert_same_ranking(catalog.exact_search(key, k=5), neighbours, distance)
        bags = catalog.exact_search("p000/photo-0.jpg", k=5, filter={"category": "Bag"})
        distance = catalog_distances(catalog, catalog.vector("p000/photo-0.jpg"))
        assert_same_ranking(bags, expected["filtered"], distance)
        assert catalog.verify() == []
    with sqlite3.connect(v2_catalog / "catalog.sqlite") as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        version = db.execute("SELECT value FROM settings WHERE name = 'schema_version'").fetchone()[0]
        columns = [row[1] for row in db.execute("PRAGMA table_info(items)")]
    assert "removed_keys" in tables and version == "3" and "feed" in columns


def test_a_schema_2_catalog_opened_read_only_has_no_removed_keys_and_no_error(v2_catalog: Path) -> None:
    with Catalog.open(v2_catalog, readonly=True) as catalog:
        assert catalog.removed_keys() == []
        assert len(catalog.search("p000/photo-0.jpg", k=3)) == 3


def test_a_schema_2_catalog_remembers_removals_once_opened_by_this_version(v2_catalog: Path) -> None:
    with Catalog.open(v2_catalog) as catalog:
        catalog.remove("p001/photo-0.jpg")
    with Catalog.open(v2_catalog, readonly=True) as catalog:
        assert catalog.removed_keys() == ["p001/photo-0.jpg"]
