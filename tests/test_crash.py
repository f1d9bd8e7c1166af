"""kill -9 in the middle of indexing leaves a catalog that opens, is consistent, and resumes."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from killing import kill_when

from fashionrec_onnx import Catalog
from fashionrec_onnx.quality.datasets import SAMPLE_DIR

INDEXER = textwrap.dedent(
    """
    import sys
    from fashionrec_onnx import Catalog
    catalog = Catalog.open_or_create(sys.argv[1], sys.argv[2])
    catalog.index_folder(sys.argv[3], progress=False, batch_size=8)
    catalog.close()
    """
)


def committed_items(database: Path) -> int:
    if not database.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5) as db:
            return int(db.execute("SELECT COUNT(*) FROM items").fetchone()[0])
    except sqlite3.OperationalError:
        return 0  # not created yet


@pytest.mark.parametrize("kill_after", [40, 400])
def test_sigkill_during_indexing_leaves_a_consistent_catalog_that_resumes(
    tmp_path: Path, small_model: Path, kill_after: int
) -> None:
    catalog_dir = tmp_path / "catalog"
    process = subprocess.Popen(
        [sys.executable, "-c", INDEXER, str(catalog_dir), str(small_model), str(SAMPLE_DIR)]
    )
    kill_when(process, lambda: committed_items(catalog_dir / "catalog.sqlite") >= kill_after)

    with Catalog.open(catalog_dir) as catalog:
        survived = len(catalog)
        assert survived >= kill_after and survived % 8 == 0  # whole batches only, never a mix
        assert catalog.verify() == []
        some_key = catalog.keys()[-1]
        assert catalog.search(some_key, k=3)  # the graph serves what the store holds
        report = catalog.index_folder(SAMPLE_DIR, progress=False, batch_size=8)
        assert report.unchanged == survived and report.embedded == 1000 - survived
        assert len(catalog) == 1000 and catalog.verify() == []
        assert catalog.check(k=5, sample=200).recall >= 0.99
