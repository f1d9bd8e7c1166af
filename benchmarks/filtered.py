"""Filtered search through the whole library (`Catalog.search` with a category filter) against
what a notebook user writes: mask the rows of the category, then scikit-learn brute force on them.

A narrow filter (one category, ~10% of the catalog) is searched exactly among its matches; a
broad one (six categories, above the catalog's exact-search limit) is searched inside the HNSW
graph. Both report recall@5 against the exact filtered answer.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from benchmarks.common import summary_ms, timed
from benchmarks.search import exact_topk
from fashionrec_onnx import Catalog
from fashionrec_onnx.quality.datasets import CLASSES
from fashionrec_onnx.quality.evaluation import recall_at_k

FILTERS = {
    "none": None,
    "narrow (1 category)": [CLASSES[3]],
    "broad (6 categories)": list(CLASSES[:6]),
}


def run(
    model: Path, base: np.ndarray, labels: np.ndarray, queries: np.ndarray, count: int
) -> dict[str, object]:
    from sklearn.neighbors import NearestNeighbors

    names = np.asarray(CLASSES)[labels]
    queries = queries[:count]
    results: dict[str, object] = {"n": len(base), "queries": len(queries), "filters": {}}
    with tempfile.TemporaryDirectory() as tmp:
        catalog = Catalog.create(Path(tmp) / "catalog", model)
        try:
            results["build_s"] = timed(
                lambda: catalog.add_many(
                    [str(i) for i in range(len(base))], base, metadata=({"category": c} for c in names)
                )
            )
            for name, wanted in FILTERS.items():
                mask = np.ones(len(base), bool) if wanted is None else np.isin(names, wanted)
                where = None if wanted is None else {"category": wanted}
                found: list[list[int]] = []

                def ours(query: np.ndarray, where=where, found=found) -> None:
                    found.append([int(h.key) for h in catalog.search(query, k=5, filter=where)])

                def baseline(query: np.ndarray, mask=mask) -> None:
                    rows = np.flatnonzero(mask)
                    knn = NearestNeighbors(algorithm="brute", metric="euclidean").fit(base[rows])
                    rows[knn.kneighbors(query[None], n_neighbors=5)[1][0]]

                # Interleaved, so both see the same moment of a noisy machine.
                ours_s, base_s = [], []
                for i, query in enumerate(queries):
                    ours_s.append(timed(lambda q=query: ours(q)))
                    if i % 4 == 0:
                        base_s.append(timed(lambda q=query: baseline(q)))
                ours_ms, base_ms = summary_ms(ours_s), summary_ms(base_s)
                rows = np.flatnonzero(mask)
                truth = rows[exact_topk(base[rows], queries, 5)]
                results["filters"][name] = {  # type: ignore[index]
                    "matching": int(mask.sum()),
                    "ours": ours_ms,
                    "baseline": base_ms,
                    "speedup": base_ms["median_ms"] / ours_ms["median_ms"],
                    "recall@5": recall_at_k(np.asarray(found), truth, 5),
                }
        finally:
            catalog.close()
    return results
