"""Writes the catalog in tests/data/v2-catalogs with the code of `main` before removals were
remembered (storage schema 2 without the ``removed_keys`` table).

Kept for the record, like make_v1_catalogs.py: the fixture proves that catalogs written by that
code keep opening, answer as before, and take the new table on their first writable open.
``expected.json`` holds what searches answered when it was written.

    git archive main | tar -x -C /tmp/main-src
    PYTHONPATH=/tmp/main-src python tests/data/make_v2_catalogs.py MODEL.onnx
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from make_v1_catalogs import CATEGORIES, structured_vectors  # this folder: run as a script

from fashionrec_onnx import Catalog

HERE = Path(__file__).resolve().parent / "v2-catalogs"


def write(name: str, model: Path) -> None:
    root = HERE / name
    shutil.rmtree(root, ignore_errors=True)
    catalog = Catalog.create(root, model, ef=64)
    vectors = structured_vectors(120, catalog.dim, seed=2)
    keys = [f"p{i // 3:03d}/photo-{i % 3}.jpg" for i in range(len(vectors))]
    metadata = [{"category": CATEGORIES[i % 4], "product": f"p{i // 3:03d}"} for i in range(len(vectors))]
    catalog.add_many(keys, vectors, metadata=metadata)
    catalog.remove(*keys[10:20])  # removed before removals were remembered: not in the new table
    expected = {
        "items": len(catalog),
        "removed": keys[10:20],
        "exact": {key: [h.key for h in catalog.exact_search(key, k=5)] for key in keys[::29]},
        "filtered": [h.key for h in catalog.exact_search(keys[0], k=5, filter={"category": "Bag"})],
    }
    catalog.close()
    (root / ".lock").unlink(missing_ok=True)
    (root / "expected.json").write_text(json.dumps(expected, indent=1))


if __name__ == "__main__":
    write("float32", Path(sys.argv[1]))
