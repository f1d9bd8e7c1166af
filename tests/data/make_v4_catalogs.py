"""Writes the catalog in tests/data/v4-catalogs with the code of `main` before the tier's wider
space (aa3e779: a PCA-reduced float32 catalog whose compact tier is of format 1, in the graph's
own 16-d space, ``tier-pca-16-1.int8``).

Kept for the record, like make_v3_catalogs.py: the fixture proves that such a catalog opened
read-only keeps answering through its format 1 tier, and that the first writable open remakes
the tier in the wider space (format 2) and answers as before. ``expected.json`` holds what exact
and approximate searches answered then.

    git archive aa3e779 | tar -x -C /tmp/v4-src
    PYTHONPATH=/tmp/v4-src python tests/data/make_v4_catalogs.py MODEL.onnx
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from make_v1_catalogs import CATEGORIES, structured_vectors  # this folder: run as a script

from fashionrec_onnx import Catalog

HERE = Path(__file__).resolve().parent / "v4-catalogs"


def write(name: str, model: Path) -> None:
    root = HERE / name
    shutil.rmtree(root, ignore_errors=True)
    catalog = Catalog.create(root, model, ef=64)
    vectors = structured_vectors(240, catalog.dim, seed=4)
    keys = [f"p{i // 3:03d}/photo-{i % 3}.jpg" for i in range(len(vectors))]
    metadata = [{"category": CATEGORIES[i % 4], "product": f"p{i // 3:03d}"} for i in range(len(vectors))]
    catalog.add_many(keys[:200], vectors[:200], metadata=metadata[:200])
    catalog.reduce(16)
    catalog.add_many(keys[200:], vectors[200:], metadata=metadata[200:])  # tier rows written with them
    catalog.remove(*keys[10:13])
    probes = [key for key in keys[::19] if key in catalog]
    expected = {
        "items": len(catalog),
        "exact": {key: [h.key for h in catalog.exact_search(key, k=5)] for key in probes},
        "search": {key: [h.key for h in catalog.search(key, k=5)] for key in probes},
        "filtered": [h.key for h in catalog.exact_search(keys[0], k=5, filter={"category": "Bag"})],
    }
    catalog.close()
    (root / ".lock").unlink(missing_ok=True)
    (root / "expected.json").write_text(json.dumps(expected, indent=1))


if __name__ == "__main__":
    write("reduced-float32", Path(sys.argv[1]))
