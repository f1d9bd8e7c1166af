"""Writes the catalogs in tests/data/v1-catalogs with fashionrec-onnx 0.1.0 (storage schema 1).

Kept for the record: the fixtures were made by this script at the last 0.1.0 commit, before the
storage format changed, so that tests can prove that catalogs users already have keep opening.
Each catalog directory holds ``expected.json``: what searches answered when it was written.

    python tests/data/make_v1_catalogs.py MODEL.onnx
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np

from fashionrec_onnx import Catalog

HERE = Path(__file__).resolve().parent / "v1-catalogs"
CATEGORIES = ["Dress", "Bag", "Sneaker", "Coat"]


def structured_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    """Clustered unit vectors (isotropic noise would make every neighbour list a tie)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(8, dim))
    vectors = centres[rng.integers(0, 8, n)] + 0.35 * rng.normal(size=(n, dim))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def write(name: str, model: Path, *, vector_dtype: str, reduce: int | None) -> None:
    root = HERE / name
    shutil.rmtree(root, ignore_errors=True)
    catalog = Catalog.create(root, model, vector_dtype=vector_dtype, ef=64)
    vectors = structured_vectors(240, catalog.dim, seed=len(name))
    keys = [f"p{i // 3:03d}/photo-{i % 3}.jpg" for i in range(len(vectors))]
    metadata = [{"category": CATEGORIES[i % 4], "product": f"p{i // 3:03d}"} for i in range(len(vectors))]
    catalog.add_many(keys[:120], vectors[:120], metadata=metadata[:120])
    catalog.add_many(keys[120:], vectors[120:], metadata=metadata[120:])
    catalog.remove(*keys[10:20])  # holes in the labels, as churn leaves them
    catalog.add_many(keys[15:17], vectors[15:17] * -1.0, metadata=metadata[15:17])  # re-added: new labels
    if reduce:
        catalog.reduce(reduce)
    expected = {
        "items": len(catalog),
        "dim": catalog.dim,
        "vector_dtype": vector_dtype,
        "reduced": reduce,
        "ef": catalog.params.ef,
        "exact": {key: [h.key for h in catalog.exact_search(key, k=5)] for key in keys[::37]},
        "filtered": [h.key for h in catalog.exact_search(keys[0], k=5, filter={"category": "Bag"})],
        "vector_p000": catalog.vector(keys[0]).tolist()[:8],
    }
    catalog.close()
    (root / ".lock").unlink(missing_ok=True)
    (root / "expected.json").write_text(json.dumps(expected, indent=1))


if __name__ == "__main__":
    write("float32", Path(sys.argv[1]), vector_dtype="float32", reduce=None)
    write("float16-pca", Path(sys.argv[1]), vector_dtype="float16", reduce=16)
