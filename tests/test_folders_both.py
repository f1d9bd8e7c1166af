"""Folder indexing is one implementation over the storage seam (`feeds.folders`): the same
behaviour on a local directory catalog and on a Milvus collection (`new_location` gives both)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fashionrec_onnx import Catalog
from fashionrec_onnx.errors import CatalogError


def _images(folder: Path, names: list[str]) -> Path:
    rng = np.random.default_rng(0)
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), np.uint8)).save(folder / name)
    return folder


def test_index_reindex_move_prune_and_removals_on_both_backends(
    new_location: str, small_model: Path, tmp_path: Path
) -> None:
    folder = _images(tmp_path / "shop", ["bag/a.png", "bag/b.png", "dress/c.png", "dress/d.png"])
    with Catalog.create(new_location, small_model) as catalog:
        report = catalog.index_folder(folder, metadata={"bag/a.png": {"colour": "red"}}, progress=False)
        assert (report.scanned, report.added, report.unchanged) == (4, 4, 0)
        assert catalog.get("bag/a.png").metadata == {"colour": "red"}
        again = catalog.index_folder(folder, metadata={"bag/a.png": {"colour": "blue"}}, progress=False)
        assert (again.added, again.unchanged, again.metadata_updated) == (0, 4, 1)
        assert catalog.get("bag/a.png").metadata == {"colour": "blue"}
        vector = catalog.vector("dress/c.png")

        moved = shutil.move(folder, tmp_path / "renamed")  # the folder moved: paths, no embedding
        report = catalog.index_folder(moved, progress=False)
        assert (report.moved, report.added, report.updated) == (4, 0, 0)
        assert catalog.get("dress/c.png").path == str(Path(moved) / "dress" / "c.png")
        np.testing.assert_array_equal(catalog.vector("dress/c.png"), vector)
        assert catalog.get("bag/a.png").metadata == {"colour": "blue"}

        assert catalog.remove("bag/b.png") == 1  # by hand: stays out
        assert catalog.index_folder(moved, progress=False).skipped_removed == 1
        assert "bag/b.png" not in catalog
        (Path(moved) / "dress" / "d.png").unlink()
        catalog.claim_for_feed("bag/", ["bag/a.png"])  # a feed's item is the feed's to remove
        (Path(moved) / "bag" / "a.png").unlink()
        pruned = catalog.index_folder(moved, prune=True, progress=False)
        assert pruned.removed == 1 and "dress/d.png" not in catalog and "bag/a.png" in catalog
        assert catalog.removed_keys() == ["bag/b.png"]  # a pruned key is not remembered

        back = catalog.index_folder(moved, readd_removed=True, progress=False)
        assert back.added == 1 and "bag/b.png" in catalog and catalog.removed_keys() == []
        assert catalog.feed_owners(["bag/b.png"]) == {"bag/b.png": None}


def test_a_key_of_another_image_is_refused_before_anything_is_written_on_both_backends(
    new_location: str, small_model: Path, tmp_path: Path
) -> None:
    first = _images(tmp_path / "one", ["x.png", "y.png"])
    second = _images(tmp_path / "two", ["x.png", "z.png"])
    with Catalog.create(new_location, small_model) as catalog:
        assert catalog.index_folder(first, progress=False).added == 2
        with pytest.raises(CatalogError, match="clash"):
            catalog.index_folder(second, progress=False)
        assert len(catalog) == 2 and "z.png" not in catalog
        assert catalog.index_folder(second, key_prefix="two/", progress=False).added == 2
