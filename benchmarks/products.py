"""Search grouped by product against plain search, side by side on one catalog.

Fashion-MNIST has no product ids, so the train images are grouped into products of 1-4 photos by
their nearest neighbours within a category (`datasets.group_into_products` on the embeddings):
a product's photos look alike, the hard case for grouping (a query's nearest photos are often
siblings). One catalog (full graph, float32, product field set) answers the same queries four
ways, interleaved so that the machine's load falls on all alike: plain search, grouped search,
more-like-this grouped, and grouped search with a 10% filter; the grouped answers are compared
with exact search followed by a group-by. Run alone: ``python -m benchmarks.products --items 44000``.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import (
    RESULTS,
    bench_model,
    embed_corpus,
    machine_info,
    summary_ms,
    timed,
    write_report,
)
from fashionrec_onnx import Catalog
from fashionrec_onnx.quality.datasets import group_into_products

log = logging.getLogger("benchmarks")

QUERIES = 300
AGREEMENT_QUERIES = 50
K = 5


def _grouped_exact(catalog: Catalog, query: object, k: int, **kwargs: object) -> list[str]:
    """Exact search followed by a group-by: each product's best photo, best products first."""
    seen: set[str] = set()
    best: list[str] = []
    for hit in catalog.exact_search(query, k=len(catalog), **kwargs):  # type: ignore[arg-type]
        if hit.product not in seen:
            seen.add(hit.product)  # type: ignore[arg-type]
            best.append(hit.key)
    return best[:k]


def run(model: Path, corpus: np.ndarray, labels: np.ndarray, queries: np.ndarray) -> dict[str, object]:
    products = group_into_products(corpus, labels, seed=0)
    sizes = np.bincount(np.unique(products, return_counts=True)[1])
    with (
        tempfile.TemporaryDirectory() as tmp,
        Catalog.create(Path(tmp) / "c", model, product_field="product") as c,
    ):
        keys = [f"item-{i:06d}" for i in range(len(corpus))]
        metadata = [{"product": p, "category": str(int(y)), "tenth": str(i % 10 == 0)} for i, (p, y) in
                    enumerate(zip(products, labels))]  # fmt: skip
        for start in range(0, len(keys), 20_000):
            stop = start + 20_000
            c.add_many(keys[start:stop], corpus[start:stop], metadata=metadata[start:stop])
        ways = {
            "plain": lambda q, key: c.search(q, k=K),
            "grouped": lambda q, key: c.search(q, k=K, group_by="product"),
            "more_like_this_grouped": lambda q, key: c.more_like_this(key, k=K, group_by="product"),
            "grouped_filter_10pct": lambda q, key: c.search(
                q, k=K, group_by="product", filter={"tenth": "True"}
            ),
        }
        times: dict[str, list[float]] = {name: [] for name in ways}
        rng = np.random.default_rng(0)
        catalog_keys = rng.choice(len(keys), len(queries))
        for way in ways.values():  # warm up: the product column and its order are built once
            way(queries[0], keys[0])
        for query, index in zip(queries, catalog_keys):
            for name, way in ways.items():
                times[name].append(timed(lambda w=way, q=query, i=index: w(q, keys[i])))
        agreement = {"grouped": 0, "grouped_filter_10pct": 0}
        for query in queries[:AGREEMENT_QUERIES]:
            got = [h.key for h in c.search(query, k=K, group_by="product")]
            agreement["grouped"] += int(got == _grouped_exact(c, query, K))
            wanted = {"tenth": "True"}
            got = [h.key for h in c.search(query, k=K, group_by="product", filter=wanted)]
            agreement["grouped_filter_10pct"] += int(got == _grouped_exact(c, query, K, filter=wanted))
        plain = summary_ms(times["plain"])["median_ms"]
        return {
            "items": len(corpus),
            "products": len(set(products)),
            "photos_per_product": {str(size): int(n) for size, n in enumerate(sizes) if n},
            "k": K,
            **{name: summary_ms(values) for name, values in times.items()},
            "median_ratio_to_plain": {
                name: summary_ms(values)["median_ms"] / plain for name, values in times.items()
            },
            "same_as_exact_then_group_by": {
                name: f"{count} of {AGREEMENT_QUERIES} queries" for name, count in agreement.items()
            },
        }


def table(results: dict[str, Any]) -> list[str]:
    """The grouped-search table (also in the suite's report)."""
    lines = ["| search | p50 ms | p95 ms | p50 / plain |", "|---|---:|---:|---:|"]
    for name in ("plain", "grouped", "more_like_this_grouped", "grouped_filter_10pct"):
        figures, ratio = results[name], results["median_ratio_to_plain"][name]
        lines.append(f"| {name} | {figures['median_ms']:.2f} | {figures['p95_ms']:.2f} | {ratio:.2f} |")
    agreement = ", ".join(
        f"{name}: {count}" for name, count in results["same_as_exact_then_group_by"].items()
    )
    return [*lines, "", f"Same answer as exact search followed by a group-by: {agreement}.", ""]


def markdown(results: dict[str, Any]) -> str:
    machine = results["machine"]
    return "\n".join(
        [
            f"# Grouped search at {results['items']:,} photos ({results['products']:,} products)",
            "",
            f"Measured {results['date']} on {machine['cpu']} ({machine['cores']} cores), load average "
            f"{machine['load_average']} at the start; k={results['k']}, {QUERIES} queries, the four ways "
            "interleaved query by query. Photos per product: "
            f"{results['photos_per_product']}.",
            "",
            *table(results),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.products", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--items", type=int, default=44_000, help="Fashion-MNIST train images in the catalog")
    parser.add_argument("--size", type=int, default=64, help="model input size (px)")
    parser.add_argument("--out", type=Path, default=RESULTS / "products")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    model = bench_model(args.size)
    corpus, labels = embed_corpus(model, "train", args.items)
    queries, _ = embed_corpus(model, "test", QUERIES)
    results = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine_info(),
        "model": f"{args.size} px, random:seed=0",
        **run(model, corpus, labels, queries),
    }
    write_report(args.out, results, markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
