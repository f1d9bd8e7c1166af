"""Retrieval quality on Fashion-MNIST: precision@5 by category, ours against raw pixels.

Queries are test-split images, the catalog is the train split (or its first N images); a hit
is correct when it has the query's category. The weights used are written next to every figure:
random weights measure the pipeline, not what ImageNet features would give.
"""

from __future__ import annotations

import numpy as np

from benchmarks.search import exact_topk
from fashionrec_onnx.datasets import CLASSES
from fashionrec_onnx.evaluation import precision_at_k, precision_at_k_by_class


def _normalise(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def evaluate(
    catalog: np.ndarray, catalog_labels: np.ndarray, queries: np.ndarray, query_labels: np.ndarray, k: int = 5
) -> dict[str, object]:
    top = exact_topk(catalog, queries, k)
    names = np.asarray(CLASSES)
    query_names = names[query_labels].tolist()
    retrieved = names[catalog_labels][top].tolist()
    return {
        f"precision@{k}": precision_at_k(query_names, retrieved, k),
        "by_category": precision_at_k_by_class(query_names, retrieved, k),
    }


def run(
    embeddings: dict[str, tuple[np.ndarray, np.ndarray]],
    catalog_labels: np.ndarray,
    query_labels: np.ndarray,
    weights: dict[str, str],
) -> dict[str, object]:
    """``embeddings``: name -> (catalog vectors, query vectors); raw pixels are added here."""
    from fashionrec_onnx.datasets import load_split

    train, _ = load_split("train")
    test, _ = load_split("test")
    pixels_catalog = _normalise(train[: len(catalog_labels)].reshape(len(catalog_labels), -1))
    pixels_queries = _normalise(test[: len(query_labels)].reshape(len(query_labels), -1))
    pixels = evaluate(pixels_catalog, catalog_labels, pixels_queries, query_labels)
    results = {"raw pixels (baseline)": {**pixels, "weights": "none (784 grey levels)"}}
    for name, (catalog, queries) in embeddings.items():
        results[name] = {**evaluate(catalog, catalog_labels, queries, query_labels), "weights": weights[name]}
    return {
        "catalog": f"Fashion-MNIST train, first {len(catalog_labels)} images",
        "queries": f"Fashion-MNIST test, first {len(query_labels)} images",
        "methods": results,
    }
