"""The libraries a user would pick instead, side by side with the catalog on the same vectors.

    python -m benchmarks.peers --items 100000 [--real 44000] [--no-milvus | --uri milvus://HOST:PORT/NAME]

Rows, one after the other in one process and one run: this catalog (full graph; and with
``reduce_to=256``, its PCA graph), faiss ``IndexHNSWFlat`` (filtered through an ``IDSelectorBatch``
in ``SearchParametersHNSW``), usearch ``Index`` (its Python API has no filtered search: the
filtered columns stay empty), and the Milvus backend through the public API
(``Catalog.create("milvus://...")``; without ``--uri`` the PyPI Milvus 2.3 test server is started
for the run, as `benchmarks.milvus` does). Every graph gets the catalog's M, ef_construction and ef.

Vectors: the scale probe's corpus (`benchmarks.scale.corpus`: real Fashion-MNIST embeddings grown
with structured vectors near them, never isotropic noise) and its metadata (a field matching 1%
of the items). Per row: build seconds (catalogs: `add_many` in batches with metadata; Milvus: plus
the wait until its engine serves every item through its HNSW index), p50 of single-query searches,
recall@5 against brute force, and the same two for the 1% filter against brute force over the
matching items. Recall counts a hit when it is as near as the true k-th neighbour (ties count).
Writes ``results/peers.json`` and ``results/peers.md`` after each row (a run stopped midway keeps
the rows it finished).
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import RESULTS, machine_info, milvus_test_server, summary_ms, write_report
from benchmarks.milvus import build, indexed
from benchmarks.scale import REAL, SELECTIVITY, corpus
from fashionrec_onnx.catalog.hnsw import HnswParams

log = logging.getLogger("benchmarks.peers")

K = 5
QUERIES = 200
FILTER_QUERIES = 100
BLOCK = 20_000  # vectors handed to a library at a time (a million need not be copied at once)
FIELD, EVERY = SELECTIVITY["1%"]  # metadata field "one" is "True" on every 100th item
ROWS = ("catalog", "catalog-pca", "faiss", "usearch", "milvus")
MILVUS_READ_WINDOW = 11  # seconds: past the Milvus backend's read-your-writes window


@dataclass
class Peer:
    """One library, built: its row numbers for a query, unfiltered and under the 1% filter."""

    name: str
    build_s: float
    search: Callable[[np.ndarray], list[int]]
    filtered: Callable[[np.ndarray], list[int]] | None
    note: str = ""
    close: Callable[[], None] = field(default=lambda: None)


def row_of(key: str) -> int:
    return int(key.rsplit("-", 1)[1])  # item-0001234


def catalog_peer(
    name: str, location: str, vectors: np.ndarray, labels: np.ndarray, drop: bool = False, **options: Any
) -> Peer:
    """This library through its public API (a local folder, or ``milvus://`` for the Milvus backend;
    ``drop`` drops that collection when done)."""
    remote = location.startswith("milvus://")
    if not remote:
        shutil.rmtree(location, ignore_errors=True)  # a catalog left by an earlier run in --work
    catalog, seconds = build(location, vectors, labels, **options)
    note = "" if remote else f"{catalog.graph_dim}-d graph"
    if remote:
        wait = indexed(catalog)
        seconds += wait
        note = f"build = add_many + {wait:.0f} s until the engine's HNSW index serves every item"
        time.sleep(MILVUS_READ_WINDOW)

    def close() -> None:
        if drop:
            catalog.backend.drop()
        catalog.close()

    return Peer(
        name,
        seconds,
        lambda q: [row_of(h.key) for h in catalog.search(q, k=K)],
        lambda q: [row_of(h.key) for h in catalog.search(q, k=K, filter={FIELD: "True"})],
        note,
        close,
    )


def faiss_peer(vectors: np.ndarray, allowed: np.ndarray, params: HnswParams) -> Peer:
    import faiss

    index = faiss.IndexHNSWFlat(vectors.shape[1], params.M)
    index.hnsw.efConstruction = params.ef_construction
    started = time.perf_counter()
    for start in range(0, len(vectors), BLOCK):
        index.add(np.ascontiguousarray(vectors[start : start + BLOCK], dtype=np.float32))
    seconds = time.perf_counter() - started
    plain = faiss.SearchParametersHNSW(efSearch=params.ef)
    selector = faiss.IDSelectorBatch(allowed.astype(np.int64))
    filtering = faiss.SearchParametersHNSW(sel=selector, efSearch=params.ef)

    def search(query: np.ndarray, options: Any) -> list[int]:
        _, ids = index.search(query[None, :], K, params=options)
        return [int(i) for i in ids[0] if i >= 0]

    return Peer(
        f"faiss {faiss.__version__} IndexHNSWFlat",
        seconds,
        lambda q: search(q, plain),
        lambda q, keep=selector: search(q, filtering),  # the selector lives as long as the searches
        "filter: IDSelectorBatch in SearchParametersHNSW",
    )


def usearch_peer(vectors: np.ndarray, params: HnswParams) -> Peer:
    import usearch
    from usearch.index import Index

    index = Index(
        ndim=vectors.shape[1],
        metric="l2sq",
        dtype="f32",
        connectivity=params.M,
        expansion_add=params.ef_construction,
        expansion_search=params.ef,
    )
    started = time.perf_counter()
    for start in range(0, len(vectors), BLOCK):
        block = np.ascontiguousarray(vectors[start : start + BLOCK], dtype=np.float32)
        index.add(np.arange(start, start + len(block), dtype=np.uint64), block)
    seconds = time.perf_counter() - started
    return Peer(
        f"usearch {usearch.__version__} Index (f32, l2sq)",
        seconds,
        lambda q: [int(key) for key in index.search(q, K).keys],
        None,
        "its Python API has no filtered search (C++ only)",
    )


def exact(vectors: np.ndarray, queries: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """Squared L2 distance of each query's true k-th neighbour (among ``rows`` if given), in float64."""
    best = np.full((len(queries), K), np.inf)
    chosen = np.arange(len(vectors)) if rows is None else rows
    wide = queries.astype(np.float64)
    for start in range(0, len(chosen), BLOCK):
        part = np.asarray(vectors[chosen[start : start + BLOCK]], dtype=np.float64)
        distances = (part**2).sum(1)[None, :] - 2.0 * wide @ part.T + (wide**2).sum(1)[:, None]
        best = np.partition(np.concatenate([best, distances], 1), K - 1, 1)[:, :K]
    return np.sort(best, 1)[:, K - 1]


def recall(
    vectors: np.ndarray,
    queries: np.ndarray,
    found: list[list[int]],
    kth: np.ndarray,
    allowed: np.ndarray | None = None,
) -> float:
    """Share of the k true neighbours found: a hit is as near as the true k-th (ties count) and,
    under a filter, one of the ``allowed`` rows (an item the filter refuses is never a hit)."""
    hits = 0
    for query, rows, limit in zip(queries, found, kth):
        kept = sorted(set(rows) if allowed is None else set(rows) & set(allowed.tolist()))
        got = np.asarray(vectors[kept], dtype=np.float64).reshape(-1, len(query))
        hits += int((((got - query) ** 2).sum(1) <= limit + 1e-6).sum())
    return hits / (K * len(queries))


def _answered(
    search: Callable[[np.ndarray], list[int]], queries: np.ndarray
) -> tuple[list[float], list[list[int]]]:
    """Each query's answer and its seconds, one query at a time."""
    times, found = [], []
    for query in queries:
        started = time.perf_counter()
        found.append(search(query))
        times.append(time.perf_counter() - started)
    return times, found


def measure(
    peer: Peer, vectors: np.ndarray, queries: np.ndarray, truth: dict[str, np.ndarray], allowed: np.ndarray
) -> dict[str, Any]:
    figures: dict[str, Any] = {"row": peer.name, "build_s": peer.build_s, "note": peer.note}
    times, found = _answered(peer.search, queries)
    figures["search"] = {**summary_ms(times), "recall@5": recall(vectors, queries, found, truth["all"])}
    if peer.filtered is not None:
        few = queries[:FILTER_QUERIES]
        times, found = _answered(peer.filtered, few)
        figures["filter_1%"] = {
            **summary_ms(times),
            "recall@5": recall(vectors, few, found, truth["1%"], allowed),
        }
    return figures


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def markdown(results: dict[str, Any]) -> str:
    machine = results["machine"]
    lines = [
        f"# The catalog beside its peers, {results['items']:,} items ({machine['date']})",
        "",
        "| | build s | p50 ms | recall@5 | 1% filter p50 ms | 1% filter recall@5 | load (1-min) | notes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in results["rows"]:
        search, filtered = row["search"], row.get("filter_1%")
        filter_cells = f"{filtered['median_ms']:.2f} | {filtered['recall@5']:.3f}" if filtered else "- | -"
        lines.append(
            f"| {row['row']} | {row['build_s']:.0f} | {search['median_ms']:.2f} | {search['recall@5']:.3f} | "
            f"{filter_cells} | {row['load'][0]:.1f}-{row['load'][1]:.1f} | {row['note']} |"
        )
    params = results["hnsw"]
    lines += [
        "",
        f"{results['items']:,} vectors of {results['dim']} dimensions ({results['real']:,} real "
        "Fashion-MNIST embeddings by the 64 px random-weights ResNet-50, grown along their principal "
        "directions); "
        f"{results['queries']} queries (Fashion-MNIST test embeddings), {results['filter_queries']} "
        f"under the 1% filter. Every graph: M={params['M']}, ef_construction={params['ef_construction']}, "
        f"ef={params['ef']}. p50: median of single-query calls; builds use every core. recall@5 against "
        "brute force (filtered: over the matching items).",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, shared. Load: `{results['uptime']}` at the "
        f"start; `{results['uptime_end']}` at the end. Milvus: {results.get('milvus', 'not measured')}.",
        "",
        f"Command: `{results['command']}`",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.peers",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--real", type=int, default=REAL, help="real embeddings the corpus grows from")
    parser.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS))
    parser.add_argument("--no-milvus", action="store_true", help="leave the Milvus row out")
    parser.add_argument("--uri", help="an existing Milvus collection (default: start the PyPI test server)")
    parser.add_argument("--work", type=Path, help="where the catalogs go (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=RESULTS / "peers")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    rows = [r for r in args.rows if not (args.no_milvus and r == "milvus")]
    vectors, labels, queries = corpus(args.items, args.real)
    queries = np.ascontiguousarray(np.resize(queries, (QUERIES, vectors.shape[1])), dtype=np.float32)
    allowed = np.arange(0, args.items, EVERY, dtype=np.int64)  # the rows SELECTIVITY's field marks
    truth = {"all": exact(vectors, queries), "1%": exact(vectors, queries[:FILTER_QUERIES], allowed)}
    params = HnswParams()
    results: dict[str, Any] = {
        "items": args.items,
        "dim": int(vectors.shape[1]),
        "real": min(args.items, len(labels)),
        "queries": QUERIES,
        "filter_queries": FILTER_QUERIES,
        "hnsw": {"M": params.M, "ef_construction": params.ef_construction, "ef": params.ef},
        "machine": machine_info(),
        "uptime": uptime(),
        "command": "python -m benchmarks.peers " + " ".join(sys.argv[1:] if argv is None else argv),
        "rows": [],
    }
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-peers-"))
    server = None
    try:
        for name in rows:
            load = os.getloadavg()[0]
            log.info("building %s on %d items", name, args.items)
            if name == "catalog":
                peer = catalog_peer("fashionrec catalog, full graph", str(work / "full"), vectors, labels)
            elif name == "catalog-pca":
                peer = catalog_peer(
                    "fashionrec catalog, reduce_to=256", str(work / "pca"), vectors, labels, reduce_to=256
                )
            elif name == "faiss":
                peer = faiss_peer(vectors, allowed, params)
            elif name == "usearch":
                peer = usearch_peer(vectors, params)
            else:
                uri = args.uri
                if uri is None:
                    server = milvus_test_server(work / "milvus")
                    server.start()
                    uri = server.uri(f"peers_{uuid.uuid4().hex[:8]}")
                    results["milvus"] = "PyPI milvus 2.3.5 standalone, loopback, same machine"
                else:
                    results["milvus"] = uri
                name = "fashionrec catalog on Milvus (milvus://)"
                peer = catalog_peer(name, uri, vectors, labels, drop=server is not None)
            figures = measure(peer, vectors, queries, truth, allowed)
            figures["load"] = [load, os.getloadavg()[0]]
            results["rows"].append(figures)
            log.info("%s", figures)
            results["uptime_end"] = uptime()
            write_report(args.out, results, markdown(results))  # a long run that dies keeps its rows
            peer.close()
            del peer
            gc.collect()
            if server is not None:
                server.stop()
                server = None
    finally:
        if server is not None:
            server.stop()
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
