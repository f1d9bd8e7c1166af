"""Beyond the classic pipeline: int8 quality cost, PCA-reduced graphs and float16 storage.

Each variant is measured next to the fp32 / 2048-d figures of the same run.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from benchmarks.common import Sizes, summary_ms, timed
from benchmarks.quality import evaluate
from benchmarks.search import exact_topk
from fashionrec_onnx.catalog.hnsw import HnswIndex, HnswParams
from fashionrec_onnx.catalog.pca import PCA
from fashionrec_onnx.quality.evaluation import recall_at_k


def int8_quality(
    fp32: tuple[np.ndarray, np.ndarray], int8: tuple[np.ndarray, np.ndarray], k: int = 5
) -> dict[str, object]:
    """Cosine between the two models' embeddings of the same images, and the overlap of the top-k
    each model returns on its own catalog of the same images."""
    (catalog32, queries32), (catalog8, queries8) = fp32, int8
    cosine = np.sum(queries32 * queries8, axis=1)
    top32, top8 = exact_topk(catalog32, queries32, k), exact_topk(catalog8, queries8, k)
    overlap = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(top32, top8)]))
    return {
        "cosine_median": float(np.median(cosine)),
        "cosine_min": float(cosine.min()),
        f"top{k}_overlap": overlap,
        "catalog": len(catalog32),
        "queries": len(queries32),
    }


def _graph_figures(base: np.ndarray, queries: np.ndarray, latency_queries: int) -> dict[str, object]:
    n, dim = base.shape
    index = HnswIndex(dim, HnswParams(), capacity=n)
    build = timed(lambda: index.add(np.arange(n, dtype=np.int64), base))
    with tempfile.TemporaryDirectory() as tmp:
        index.save(Path(tmp) / "g.hnsw")
        size = (Path(tmp) / "g.hnsw").stat().st_size
    latency = [timed(lambda q=q: index.search(q, 5, n)) for q in queries[:latency_queries]]
    labels, _ = index.search(queries, 60, n)
    return {"build_s": build, "graph_bytes": size, "latency": summary_ms(latency), "candidates": labels}


def reduction(
    corpus: np.ndarray,
    corpus_labels: np.ndarray,
    queries: np.ndarray,
    query_labels: np.ndarray,
    sizes: Sizes,
    dims: tuple[int, ...] = (256, 128),
) -> dict[str, object]:
    """PCA-reduced HNSW graphs (with the full-vector rerank the catalog does) against full 2048-d."""
    truth = exact_topk(corpus, queries, 5)
    variants: dict[str, object] = {}
    full = _graph_figures(corpus, queries, sizes.latency_queries)
    variants["2048-d (fp32, no reduction)"] = {
        "build_s": full["build_s"],
        "graph_bytes": full["graph_bytes"],
        "vectors_bytes": corpus.nbytes,
        "latency": full["latency"],
        "recall@5_vs_exact_full": recall_at_k(full["candidates"], truth, 5),
        **evaluate(corpus, corpus_labels, queries, query_labels),
    }
    for dim in dims:
        for whiten in (False, True):
            pca = PCA.fit(corpus[:: max(1, len(corpus) // 20_000)], dim, whiten)
            reduced, reduced_queries = pca.transform(corpus), pca.transform(queries)
            figures = _graph_figures(reduced, reduced_queries, sizes.latency_queries)
            candidates = figures["candidates"]
            scores = np.einsum("qd,qkd->qk", queries, corpus[candidates])  # full-vector rerank
            reranked = np.take_along_axis(candidates, np.argsort(-scores, axis=1), 1)
            name = f"PCA {dim}-d{' whitened' if whiten else ''}"
            variants[name] = {
                "build_s": figures["build_s"],
                "graph_bytes": figures["graph_bytes"],
                "vectors_bytes": reduced.nbytes,
                "latency": figures["latency"],
                "explained_variance": pca.explained_variance_ratio,
                "recall@5_graph_only_vs_exact_full": recall_at_k(candidates[:, :5], truth, 5),
                "recall@5_vs_exact_full": recall_at_k(reranked, truth, 5),
                **evaluate(reduced, corpus_labels, reduced_queries, query_labels),
            }
    return {"catalog": len(corpus), "queries": len(queries), "variants": variants}


def float16(corpus: np.ndarray, queries: np.ndarray) -> dict[str, object]:
    """Exact search on float16-stored vectors against float32: does the ranking change?"""
    truth = exact_topk(corpus, queries, 10)
    half = corpus.astype(np.float16).astype(np.float32)
    found = exact_topk(half, queries, 10)
    return {
        "recall@5": recall_at_k(found, truth, 5),
        "recall@10": recall_at_k(found, truth, 10),
        "bytes_float32": corpus.nbytes,
        "bytes_float16": corpus.astype(np.float16).nbytes,
    }
