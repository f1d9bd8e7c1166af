"""Loading a catalog's HNSW graph: hnswlib's ``load_index`` beside `hnsw_file.load`, side by side.

    python -m benchmarks.graph_load CATALOG [--rounds 5]

Each round loads the catalog's graph file in two fresh processes, one per loader, one after the
other (which goes first alternates), then opens the whole catalog (``Catalog.open(readonly=True)``)
in a third. Prints the median seconds of each, the ratio of the loaders, and each process's peak
memory (``ru_maxrss``: the mapped loader's peak counts the file's pages while hnswlib copies
them; they are page cache, unmapped when the load returns). Any catalog will do, e.g. one that
`benchmarks.scale` or `benchmarks.peers --work` built.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = """
import json, resource, sys, time
from pathlib import Path
how, path = sys.argv[1], Path(sys.argv[2])
import hnswlib
from fashionrec_onnx import Catalog
from fashionrec_onnx.catalog import hnsw_file
header = hnsw_file.Header.of(path.open("rb").read(hnsw_file.HEADER.size))
dim = (header.label_offset - header.offset_data) // 4
started = time.perf_counter()
if how == "load_index":
    index = hnswlib.Index(space="l2", dim=dim)
    index.load_index(str(path), allow_replace_deleted=True)
elif how == "hnsw_file.load":
    index = hnsw_file.load(path, dim)
else:
    catalog = Catalog.open(path.parent, readonly=True)
seconds = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": seconds, "peak_mb": peak}))
"""
WAYS = ("load_index", "hnsw_file.load", "Catalog.open")


def run(how: str, graph: Path) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, how, str(graph)], capture_output=True, text=True, check=True
    )
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.graph_load", description=__doc__)
    parser.add_argument("catalog", type=Path)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    graphs = sorted(args.catalog.glob("graph-*.hnsw"))
    if len(graphs) != 1:
        parser.error(f"{args.catalog} holds {len(graphs)} graph files; expected one catalog's graph")
    figures: dict[str, list[dict[str, float]]] = {how: [] for how in WAYS}
    for round_ in range(args.rounds):
        loaders = list(WAYS[:2]) if round_ % 2 == 0 else list(reversed(WAYS[:2]))
        for how in [*loaders, WAYS[2]]:
            figures[how].append(run(how, graphs[0]))
    medians = {how: statistics.median(f["seconds"] for f in runs) for how, runs in figures.items()}
    size = graphs[0].stat().st_size / 1e9
    print(f"{graphs[0]} ({size:.2f} GB), {args.rounds} rounds, medians:")
    for how, runs in figures.items():
        peaks = max(f["peak_mb"] for f in runs)
        seconds = ", ".join(f"{f['seconds']:.2f}" for f in runs)
        print(f"  {how:15s} {medians[how]:6.2f} s  (each: {seconds}; peak ru_maxrss {peaks:,.0f} MB)")
    print(f"  hnsw_file.load / load_index: {medians['hnsw_file.load'] / medians['load_index']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
