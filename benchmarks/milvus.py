"""Local and Milvus catalogs side by side, through the public API, on the same vectors.

    python -m benchmarks.milvus [--items 200000] [--base 2000] [--uri milvus://HOST:PORT/NAME]

Vectors: ``--base`` Fashion-MNIST train images embedded by the 64 px random-weights model, grown
to ``--items`` with structured vectors near them (`benchmarks.search.structured_blocks`, as the
scale probe does), with the scale probe's metadata (category, product, and fields matching 1%,
10% and 50% of the items). Queries: Fashion-MNIST test images. For each backend: ingest rate
(`add_many` in batches of 5,000), search p50/p95, filtered searches at 1/10/50%, and recall@5
of `search` against the local catalog's exact search; then `fashionrec serve` key queries per
second, on the local catalog and on Milvus with one and with two replicas (separate serve
processes on the same collection, the requests shared between them as a load balancer would).
The Milvus collection is measured once the engine serves every item through its HNSW index
(`save()` seals the writes; the wait for the index is reported). Without ``--uri`` a Milvus 2.3 standalone
server from PyPI (`tests/milvus_server.py`) is started in a temporary folder for the run.
Writes ``results/milvus.json`` and ``results/milvus.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import (
    RESULTS,
    bench_model,
    embed_corpus,
    machine_info,
    milvus_test_server,
    summary_ms,
    write_report,
)
from benchmarks.scale import SELECTIVITY, metadata
from benchmarks.search import structured_blocks

log = logging.getLogger("benchmarks.milvus")

BATCH = 5_000
QUERIES = 200
FILTER_QUERIES = 50
K = 5
SERVICE_REQUESTS = 600
SERVICE_CONCURRENCY = 8
INDEX_WAIT = 3_600  # seconds the engine may take to index a bulk load


def corpus(items: int, base: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    model = bench_model(64)
    real, labels = embed_corpus(model, "train", base)
    queries, _ = embed_corpus(model, "test", QUERIES)
    if items <= len(real):
        return real[:items], labels, queries
    grown = np.concatenate([real, *structured_blocks(real, items - len(real), seed=1)])
    return grown.astype(np.float32), labels, queries


def build(location: str, vectors: np.ndarray, labels: np.ndarray, **options: Any) -> tuple[Any, float]:
    """A catalog of ``vectors`` with the scale probe's metadata (``options`` go to `Catalog.create`),
    and the seconds its `add_many` calls took."""
    from fashionrec_onnx import Catalog

    catalog = Catalog.create(location, bench_model(64), **options)
    started = time.perf_counter()
    for start in range(0, len(vectors), BATCH):
        count = min(BATCH, len(vectors) - start)
        keys = [f"item-{i:07d}" for i in range(start, start + count)]
        catalog.add_many(keys, vectors[start : start + count], metadata=metadata(start, count, labels))
        log.info("%s: %d / %d items", location, start + count, len(vectors))
    return catalog, time.perf_counter() - started


def indexed(catalog: Any) -> float:
    """Seconds from sealing a Milvus catalog's writes until its engine serves every item
    through its HNSW index (a local catalog's graph is built by `add_many` itself)."""
    started = time.perf_counter()
    catalog.save()
    while (done := catalog.backend.indexed())[0] < done[1]:
        if time.perf_counter() - started > INDEX_WAIT:
            raise RuntimeError(f"the engine indexed {done[0]} of {done[1]} items in {INDEX_WAIT} s")
        log.info("engine index: %d / %d items", *done)
        time.sleep(5)
    return time.perf_counter() - started


def service(location: str, replicas: int, keys: list[str]) -> dict[str, Any]:
    """Key queries per second through ``replicas`` `fashionrec serve` processes (one worker
    each), the requests dealt among them, `SERVICE_CONCURRENCY` in flight in all."""
    from benchmarks.service_load import lean_load, start_server

    servers = []
    try:
        for _ in range(replicas):
            servers.append(start_server(location, 1))  # type: ignore[arg-type]
        requests = [{"json": {"key": key, "k": K}} for key in keys]
        per = max(1, SERVICE_CONCURRENCY // replicas)

        async def dealt(batch: list[dict]) -> list[dict[str, float]]:
            return list(
                await asyncio.gather(
                    *(lean_load(url, batch[i::replicas], per) for i, (_, url) in enumerate(servers))
                )
            )

        asyncio.run(dealt(requests[: 20 * replicas]))  # warm: connections, first reads
        started = time.perf_counter()
        parts = asyncio.run(dealt(requests))
        wall = time.perf_counter() - started
        return {
            "replicas": replicas,
            "requests": len(requests),
            "concurrency": per * replicas,
            "per_second": len(requests) / wall,
            "p50_ms": float(np.median([part["p50_ms"] for part in parts])),
            "errors": int(sum(part["errors"] for part in parts)),
        }
    finally:
        for process, _ in servers:
            process.terminate()
            process.wait(timeout=60)


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
    rows.append(f"| engine index wait after ingest (s) | - | {remote.get('index_wait_s', 0):.0f} |")
    served = results.get("service", {})
    if served:
        rows.append(
            f"| serve key queries/s, 1 process (p50 ms) | {served['local']['per_second']:.0f} "
            f"({served['local']['p50_ms']:.1f}) | {served['milvus_1']['per_second']:.0f} "
            f"({served['milvus_1']['p50_ms']:.1f}) |"
        )
        rows.append(
            f"| serve key queries/s, 2 replicas (p50 ms) | - | {served['milvus_2']['per_second']:.0f} "
            f"({served['milvus_2']['p50_ms']:.1f}) |"
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
    parser.add_argument("--no-service", action="store_true", help="skip the serve requests/s")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    vectors, labels, queries = corpus(args.items, args.base)
    work = Path(tempfile.mkdtemp(prefix="bench-milvus-"))
    server = None
    if args.uri:
        uri, described = args.uri, args.uri
    else:
        server = milvus_test_server(work / "milvus")
        server.start()
        uri, described = server.uri(f"bench_{uuid.uuid4().hex[:8]}"), "PyPI milvus 2.3.5 standalone, loopback"
    try:
        local, local_build = build(str(work / "local"), vectors, labels)
        remote, remote_build = build(uri, vectors, labels)
        index_wait = indexed(remote)
        time.sleep(11)  # past the read-your-writes window (Strong reads)
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
                "index_wait_s": index_wait,
                **measure(remote, queries, exact, filtered),
            },
        }
        if not args.no_service:
            rng = np.random.default_rng(0)
            keys = [f"item-{i:07d}" for i in rng.integers(0, args.items, SERVICE_REQUESTS)]
            local.close()
            results["service"] = {
                "local": service(str(work / "local"), 1, keys),
                "milvus_1": service(uri, 1, keys),
                "milvus_2": service(uri, 2, keys),
            }
        if server is not None:
            remote.backend.drop()
        local.close()
        remote.close()
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)
    write_report(args.out, results, markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
