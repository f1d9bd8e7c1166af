"""Local and Milvus catalogs side by side, through the public API, on the same vectors.

    python -m benchmarks.milvus [--items 200000] [--base 2000] [--uri milvus://HOST:PORT/NAME]

Vectors: ``--base`` Fashion-MNIST train images embedded by the 64 px random-weights model, grown
to ``--items`` with structured vectors near them (`benchmarks.search.structured_blocks`, as the
scale probe does), with the scale probe's metadata (category, product, and fields matching 1%,
10% and 50% of the items). Queries: Fashion-MNIST test images. For each backend: ingest rate
(`add_many` in batches of 5,000), search p50/p95, filtered searches at 1/10/50%, and recall@5
of `search` against the local catalog's exact search. Without ``--uri`` a Milvus 2.3 standalone
server from PyPI (`tests/milvus_server.py`) is started in a temporary folder for the run.
Writes ``results/milvus.json`` and ``results/milvus.md``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import RESULTS, bench_model, embed_corpus, machine_info, summary_ms, write_report
from benchmarks.scale import SELECTIVITY, metadata
from benchmarks.search import structured_blocks

log = logging.getLogger("benchmarks.milvus")

BATCH = 5_000
QUERIES = 200
FILTER_QUERIES = 50
K = 5


def corpus(items: int, base: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    model = bench_model(64)
    real, labels = embed_corpus(model, "train", base)
    queries, _ = embed_corpus(model, "test", QUERIES)
    if items <= len(real):
        return real[:items], labels, queries
    grown = np.concatenate([real, *structured_blocks(real, items - len(real), seed=1)])
    return grown.astype(np.float32), labels, queries


def build(location: str, vectors: np.ndarray, labels: np.ndarray) -> tuple[Any, float]:
    from fashionrec_onnx import Catalog

    catalog = Catalog.create(location, bench_model(64))
    started = time.perf_counter()
    for start in range(0, len(vectors), BATCH):
        count = min(BATCH, len(vectors) - start)
        keys = [f"item-{i:07d}" for i in range(start, start + count)]
        catalog.add_many(keys, vectors[start : start + count], metadata=metadata(start, count, labels))
        log.info("%s: %d / %d items", location, start + count, len(vectors))
    return catalog, time.perf_counter() - started


def measure(catalog: Any, queries: np.ndarray, exact: list[list[str]], exact_filtered: dict) -> dict:
    times = []
    found = 0
    for query, want in zip(queries, exact):
        started = time.perf_counter()
        hits = catalog.search(query, k=K)
        times.append(time.perf_counter() - started)
        found += len({h.key for h in hits} & set(want))
    out: dict[str, Any] = {"search": summary_ms(times), "recall_at_5": found / (K * len(exact))}
    for name, (field, _) in SELECTIVITY.items():
        times, found = [], 0
        for query, want in zip(queries[:FILTER_QUERIES], exact_filtered[name]):
            started = time.perf_counter()
            hits = catalog.search(query, k=K, filter={field: "True"})
            times.append(time.perf_counter() - started)
            found += len({h.key for h in hits} & set(want))
        out[f"filter_{name}"] = {**summary_ms(times), "recall_at_5": found / (K * FILTER_QUERIES)}
    return out


def markdown(results: dict[str, Any]) -> str:
    rows = [
        f"# Local and Milvus catalogs, {results['items']:,} items ({results['date']})",
        "",
        "| | local | Milvus |",
        "| --- | --- | --- |",
    ]
    local, remote = results["local"], results["milvus"]
    rows.append(f"| ingest (items/s) | {local['ingest_per_s']:.0f} | {remote['ingest_per_s']:.0f} |")
    rows.append(
        f"| search p50 / p95 (ms) | {local['search']['median_ms']:.2f} / {local['search']['p95_ms']:.2f} "
        f"| {remote['search']['median_ms']:.2f} / {remote['search']['p95_ms']:.2f} |"
    )
    rows.append(f"| recall@5 vs exact | {local['recall_at_5']:.3f} | {remote['recall_at_5']:.3f} |")
    for name in SELECTIVITY:
        a, b = local[f"filter_{name}"], remote[f"filter_{name}"]
        rows.append(
            f"| filter {name}: p50 ms, recall@5 | {a['median_ms']:.1f}, {a['recall_at_5']:.3f} "
            f"| {b['median_ms']:.1f}, {b['recall_at_5']:.3f} |"
        )
    rows += ["", f"Milvus: {results['server']}. Machine: {results['machine']['cpu']}, "
             f"{results['machine']['cores']} cores, load {results['machine']['load_average']}."]  # fmt: skip
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--base", type=int, default=2_000, help="real embeddings the corpus grows from")
    parser.add_argument("--uri", help="an existing Milvus (default: start the PyPI test server)")
    parser.add_argument("--out", type=Path, default=RESULTS / "milvus")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    vectors, labels, queries = corpus(args.items, args.base)
    work = Path(tempfile.mkdtemp(prefix="bench-milvus-"))
    server = None
    if args.uri:
        uri, described = args.uri, args.uri
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from milvus_server import TestServer

        server = TestServer(work / "milvus")
        server.start()
        uri, described = server.uri(f"bench_{uuid.uuid4().hex[:8]}"), "PyPI milvus 2.3.5 standalone, loopback"
    try:
        local, local_build = build(str(work / "local"), vectors, labels)
        remote, remote_build = build(uri, vectors, labels)
        time.sleep(15)  # past the read-your-writes window (Strong reads) and the engine's index build
        exact = [[h.key for h in local.exact_search(q, k=K)] for q in queries]
        filtered = {
            name: [[h.key for h in local.exact_search(q, k=K, filter={field: "True"})] for q in few]
            for name, (field, _) in SELECTIVITY.items()
            for few in [queries[:FILTER_QUERIES]]
        }
        results: dict[str, Any] = {
            "items": args.items,
            "base": args.base,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "server": described,
            "machine": machine_info(),
            "local": {"ingest_per_s": args.items / local_build, **measure(local, queries, exact, filtered)},
            "milvus": {
                "ingest_per_s": args.items / remote_build,
                **measure(remote, queries, exact, filtered),
            },
        }
        if server is not None:
            remote.backend.drop()
        local.close()
        remote.close()
    finally:
        if server is not None:
            server.stop()
    write_report(args.out, results, markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
