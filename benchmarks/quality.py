"""Retrieval quality on Fashion-MNIST: precision@k and mAP@k by category, ours against raw pixels.

Queries are test-split images, the catalog is the train split (or its first N images); a hit
is correct when it has the query's category. The rankings, the raw-pixels baseline and every
figure come from the library's own `evaluate` and `evaluation` code (what `fashionrec evaluate`
reports), so the benchmark and the command cannot disagree. The weights used are written next
to every figure: random weights measure the pipeline, not what ImageNet features would give.
"""

from __future__ import annotations

import numpy as np

from fashionrec_onnx.quality.datasets import CLASSES
from fashionrec_onnx.quality.evaluate import THUMBNAIL, exact_rankings, pixel_vectors
from fashionrec_onnx.quality.evaluation import score_rankings

KS = (1, 5, 10)


def evaluate(
    catalog: np.ndarray, catalog_labels: np.ndarray, queries: np.ndarray, query_labels: np.ndarray
) -> dict[str, object]:
    top = exact_rankings(catalog, queries, max(KS))
    names = np.asarray(CLASSES)
    query_names = names[query_labels].tolist()
    retrieved = names[catalog_labels][top].tolist()
    relevant = np.bincount(catalog_labels, minlength=len(CLASSES))[query_labels].tolist()
    scores = score_rankings(query_names, retrieved, relevant, KS).to_dict()
    by_category = {label: figures["precision@5"] for label, figures in scores["by_label"].items()}
    return {**scores, "by_category": by_category}


def run(
    embeddings: dict[str, tuple[np.ndarray, np.ndarray]],
    catalog_labels: np.ndarray,
    query_labels: np.ndarray,
    weights: dict[str, str],
) -> dict[str, object]:
    """``embeddings``: name -> (catalog vectors, query vectors); raw pixels are added here."""
    from fashionrec_onnx.quality.datasets import load_split

    train, _ = load_split("train")
    test, _ = load_split("test")
    pixels_catalog = pixel_vectors(train[: len(catalog_labels)])
    pixels_queries = pixel_vectors(test[: len(query_labels)])
    pixels = evaluate(pixels_catalog, catalog_labels, pixels_queries, query_labels)
    results = {
        "raw pixels (baseline)": {**pixels, "weights": f"none ({THUMBNAIL}x{THUMBNAIL} grey thumbnails)"}
    }
    for name, (catalog, queries) in embeddings.items():
        results[name] = {**evaluate(catalog, catalog_labels, queries, query_labels), "weights": weights[name]}
    return {
        "catalog": f"Fashion-MNIST train, first {len(catalog_labels)} images",
        "queries": f"Fashion-MNIST test, first {len(query_labels)} images",
        "methods": results,
    }
