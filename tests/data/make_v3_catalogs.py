"""Writes the catalog in tests/data/v3-catalogs with the code of `main` before the compact tier
(storage schema 3, a PCA-reduced catalog with float16 vectors and no ``tier-*`` file).

Kept for the record, like make_v2_catalogs.py: the fixture proves that a reduced catalog written
by that code opens, gains its compact tier on the first writable open, and answers exact and
filtered searches as before. ``expected.json`` holds what exact searches answered then.

    git archive main | tar -x -C /tmp/main-src
    PYTHONPATH=/tmp/main-src python tests/data/make_v3_catalogs.py MODEL.onnx
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from make_v1_catalogs import CATEGORIES, structured_vectors  # this folder: run as a script

from fashionrec_onnx import Catalog

HERE = Path(__file__).resolve().parent / "v3-catalogs"


def write(name: str, model: Path) -> None:
    root = HERE / name
    shutil.rmtree(root, ignore_errors=True)
    catalog = Catalog.create(root, model, ef=64, vector_dtype="float16")
    vectors = structured_vectors(150, catalog.dim, seed=3)
    keys = [f"p{i // 3:03d}/photo-{i % 3}.jpg" for i in range(len(vectors))]
    metadata = [{"category": CATEGORIES[i % 4], "product": f"p{i // 3:03d}"} for i in range(len(vectors))]
    catalog.add_many(keys[:120], vectors[:120], metadata=metadata[:120])
    catalog.reduce(16)
    catalog.add_many(keys[120:], vectors[120:], metadata=metadata[120:])  # written after the PCA
    catalog.remove(*keys[10:13])
    expected = {
        "items": len(catalog),
        "exact": {
            key: [h.key for h in catalog.exact_search(key, k=5)] for key in keys[::17] if key in catalog
        },
        "filtered": [h.key for h in catalog.exact_search(keys[0], k=5, filter={"category": "Bag"})],
    }
    catalog.close()
    (root / ".lock").unlink(missing_ok=True)
    (root / "expected.json").write_text(json.dumps(expected, indent=1))


if __name__ == "__main__":
    write("reduced-float16", Path(sys.argv[1]))
