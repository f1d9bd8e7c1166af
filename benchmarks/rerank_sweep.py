"""Recall and latency of a reduced graph against the re-rank pool and ef, on a catalog built by
`benchmarks.scale` (one run, real-image queries), plus what bounds one exact search.

    python -m benchmarks.rerank_sweep --catalog benchmarks/results/raw/scale/scale-1000000-reduced-float16
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import RESULTS
from benchmarks.scale import corpus
from fashionrec_onnx import Catalog
from fashionrec_onnx.catalog import oracle
from fashionrec_onnx.catalog import search as planner
from fashionrec_onnx.quality.evaluation import recall_at_k

POOLS = ((4, 60), (8, 100), (16, 200))  # re-rank pool = factor * k + extra


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.rerank_sweep", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--catalog", type=Path, required=True)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--out", type=Path, default=RESULTS / "rerank-sweep.json")
    args = parser.parse_args(argv)
    queries = corpus(44_000)[2][: args.queries]
    catalog = Catalog.open(args.catalog, readonly=True)
    core = catalog._core
    figures: dict[str, object] = {"catalog": str(args.catalog), "items": core.count, "queries": len(queries)}
    started = time.perf_counter()
    exact, _ = oracle.exact_topk(core.vectors, core.rows, core.live_mask(), queries, 5)
    figures["truth_s"] = time.perf_counter() - started
    started = time.perf_counter()
    for _ in core.vectors.blocks(core.rows):
        pass
    figures["exact_scan_and_float16_conversion_only_s"] = time.perf_counter() - started
    started = time.perf_counter()
    catalog.exact_search(queries[0], k=5)
    figures["exact_search_one_query_s"] = time.perf_counter() - started
    sweep = []
    saved = planner.RERANK_FACTOR, planner.RERANK_EXTRA
    for ef in (128, 200):
        core.graph.index.set_ef(ef)
        for factor, extra in POOLS:
            planner.RERANK_FACTOR, planner.RERANK_EXTRA = factor, extra
            found, times = [], []
            for query in queries:
                start = time.perf_counter()
                labels, _ = planner.search(core, query, 5, np.zeros(0, np.int64), None)
                times.append(time.perf_counter() - start)
                found.append(np.pad(labels, (0, 5 - len(labels)), constant_values=-1))
            sweep.append({
                "ef": ef, "pool": factor * 5 + extra, "recall@5": recall_at_k(np.stack(found), exact, 5),
                "planner_p50_ms": float(np.median(times) * 1000),
            })  # fmt: skip
    planner.RERANK_FACTOR, planner.RERANK_EXTRA = saved
    figures["sweep"] = sweep
    catalog.close()
    args.out.write_text(json.dumps(figures, indent=1))
    print(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
