"""Search speed and recall: hnswlib (ours) against scikit-learn brute force and a numpy matmul.

Vectors are real image embeddings (Fashion-MNIST through the model). Above the real corpus the
catalog is grown with structured synthetic vectors: real embeddings moved along the corpus' own
principal directions, never isotropic noise (which makes HNSW look worse than it is).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from benchmarks.common import Sizes, summary_ms, timed
from fashionrec_onnx.catalog.hnsw import HnswIndex, HnswParams
from fashionrec_onnx.quality.evaluation import recall_at_k

SPREAD = 0.3  # synthetic offsets: this fraction of the corpus' spread along each principal axis


def structured_blocks(
    real: np.ndarray, count: int, seed: int = 0, components: int = 256, block: int = 50_000
) -> Iterator[np.ndarray]:
    """``count`` unit vectors near real ones, displaced within the real data's principal
    subspace, a block at a time (a million of them need not sit in memory)."""
    rng = np.random.default_rng(seed)
    sample = real[rng.choice(len(real), size=min(len(real), 20_000), replace=False)]
    mean = sample.mean(axis=0)
    _, singular, axes = np.linalg.svd(sample - mean, full_matrices=False)
    axes, scale = axes[:components], singular[:components] / np.sqrt(len(sample))
    for start in range(0, count, block):
        n = min(block, count - start)
        seeds = real[rng.integers(0, len(real), n)]
        offsets = (rng.standard_normal((n, len(axes))) * scale * SPREAD) @ axes
        vectors = seeds + offsets
        yield (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def structured_vectors(real: np.ndarray, count: int, seed: int = 0, components: int = 256) -> np.ndarray:
    """``count`` unit vectors near real ones (see `structured_blocks`), as one matrix."""
    return np.concatenate(list(structured_blocks(real, count, seed, components)))


def exact_topk(base: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Ground truth by matmul (on unit vectors, largest dot product = smallest L2)."""
    result = np.empty((len(queries), k), np.int64)
    for start in range(0, len(queries), 256):
        scores = queries[start : start + 256] @ base.T
        top = np.argpartition(-scores, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, top, 1), axis=1)
        result[start : start + 256] = np.take_along_axis(top, order, 1)
    return result


def _numpy_search(base: np.ndarray, query: np.ndarray, k: int) -> np.ndarray:
    scores = base @ query
    top = np.argpartition(-scores, k)[:k]
    return top[np.argsort(-scores[top])]


def run_size(base: np.ndarray, queries: np.ndarray, sizes: Sizes, kind: str) -> dict[str, object]:
    from sklearn.neighbors import NearestNeighbors

    n, dim = base.shape
    truth = exact_topk(base, queries, 10)
    latency_queries = queries[: sizes.latency_queries]
    slow_queries = queries[: max(10, sizes.latency_queries // (4 if n >= 200_000 else 1))]
    result: dict[str, object] = {"n": n, "dim": dim, "vectors": kind, "queries": len(queries)}

    # ours: hnswlib through the library's index wrapper, default parameters
    params = HnswParams()
    index = HnswIndex(dim, params, capacity=n)
    build = timed(lambda: index.add(np.arange(n, dtype=np.int64), base))
    with tempfile.TemporaryDirectory() as tmp:
        index.save(Path(tmp) / "graph.hnsw")
        disk = (Path(tmp) / "graph.hnsw").stat().st_size
    lat = [timed(lambda q=q: index.search(q, 5, n)) for q in latency_queries]
    batched = timed(lambda: index.search(queries, 5, n))
    labels, _ = index.search(queries, 10, n)
    hnsw = {
        "build_s": build,
        "disk_bytes": disk,
        "memory_bytes": disk,  # hnswlib's in-memory layout is its file layout
        "latency": summary_ms(lat),
        "batched_qps": len(queries) / batched,
        "recall@5": recall_at_k(labels, truth, 5),
        "recall@10": recall_at_k(labels, truth, 10),
        "M": params.M,
        "ef_construction": params.ef_construction,
        "ef": params.ef,
    }
    sweep = []
    for ef in sizes.ef_sweep:
        index.set_ef(ef)
        seconds = timed(lambda: [index.search(q, 10, n) for q in latency_queries])
        found, _ = index.search(queries, 10, n)
        sweep.append(
            {
                "ef": ef,
                "qps_batch1": len(latency_queries) / seconds,
                "recall@5": recall_at_k(found, truth, 5),
                "recall@10": recall_at_k(found, truth, 10),
            }
        )
    hnsw["ef_sweep"] = sweep

    # the notebooks' baseline: scikit-learn brute force, euclidean
    knn = NearestNeighbors(algorithm="brute", metric="euclidean")
    fit = timed(lambda: knn.fit(base))
    lat = [timed(lambda q=q: knn.kneighbors(q[None], n_neighbors=5)) for q in slow_queries]
    batched = timed(lambda: knn.kneighbors(queries[: len(slow_queries) * 4], n_neighbors=5))
    sklearn_result = {
        "build_s": fit,
        "memory_bytes": base.nbytes,
        "latency": summary_ms(lat),
        "batched_qps": len(slow_queries) * 4 / batched,
        "recall@5": 1.0,
        "recall@10": 1.0,
    }

    lat = [timed(lambda q=q: _numpy_search(base, q, 5)) for q in slow_queries]
    batched = timed(lambda: exact_topk(base, queries, 5))
    numpy_result = {
        "build_s": 0.0,
        "memory_bytes": base.nbytes,
        "latency": summary_ms(lat),
        "batched_qps": len(queries) / batched,
        "recall@5": 1.0,
        "recall@10": 1.0,
    }
    result["methods"] = {
        "hnswlib (ours)": hnsw,
        "sklearn_brute (baseline)": sklearn_result,
        "numpy_matmul": numpy_result,
    }
    baseline = sklearn_result["latency"]["median_ms"]
    for method in result["methods"].values():  # type: ignore[union-attr]
        method["speedup_vs_baseline"] = baseline / method["latency"]["median_ms"]
    return result


def run(corpus: np.ndarray, queries: np.ndarray, sizes: Sizes) -> list[dict[str, object]]:
    results = []
    for n in sizes.search_sizes:
        if n <= len(corpus):
            base, kind = corpus[:n], "real"
        else:
            extra = structured_vectors(corpus, n - len(corpus))
            base, kind = np.concatenate([corpus, extra]), f"{len(corpus)} real + {n - len(corpus)} structured"
        started = time.perf_counter()
        results.append(run_size(np.ascontiguousarray(base), queries, sizes, kind))
        results[-1]["seconds"] = time.perf_counter() - started
    return results
