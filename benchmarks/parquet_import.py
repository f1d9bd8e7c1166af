"""Importing ready vectors from Parquet, beside `add_many` of the same vectors and the graph alone.

    python -m benchmarks.parquet_import --items 1000000 [--real 44000] [--work DIR]

The scale probe's corpus (`benchmarks.scale.corpus`: real Fashion-MNIST embeddings grown with
structured vectors near them) and metadata, written as vectors files of 100,000 rows (the layout
`fashionrec export-vectors` writes). Then, in one run, each into a new ``reduce_to=256`` catalog
(float32 vectors): ``import_vectors`` of the folder; ``add_many`` of the same rows from memory
in blocks of 20,000, as `benchmarks.scale` builds; and ``rebuild()`` of the imported catalog,
which builds its graph again from the stored vectors: what the graph alone costs. An import
bounded by the graph, not by Python work per row, takes about as long as ``add_many``, and
the rebuild is most of both. Writes ``results/parquet-import.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import RESULTS, machine_info, write_report
from benchmarks.scale import BATCH, REAL, catalog_model, corpus, metadata

log = logging.getLogger("benchmarks.parquet_import")

PART_ROWS = 100_000


def write_parts(folder: Path, vectors: np.ndarray, labels: np.ndarray, model: Path) -> float:
    from fashionrec_onnx import read_model_info
    from fashionrec_onnx.interchange import vector_files as vf

    info = read_model_info(model)
    started = time.perf_counter()
    for number, start in enumerate(range(0, len(vectors), PART_ROWS)):
        count = min(PART_ROWS, len(vectors) - start)
        table = vf.build_table(
            info.dim,
            info.fingerprint,
            keys=[f"item-{i:07d}" for i in range(start, start + count)],
            vectors=np.asarray(vectors[start : start + count]),
            metadata=[vf.metadata_text(m) for m in metadata(start, count, labels)],
        )
        vf.write_file(folder / vf.part_name(number), table)
    return time.perf_counter() - started


def timed_import(root: Path, folder: Path, model: Path) -> dict[str, float]:
    from fashionrec_onnx import Catalog
    from fashionrec_onnx.interchange.vector_transfer import import_vectors

    shutil.rmtree(root, ignore_errors=True)
    with Catalog.create(root, model, reduce_to=256) as catalog:
        report = import_vectors(catalog, folder)
        started = time.perf_counter()
        catalog.rebuild()
        rebuild = time.perf_counter() - started
    return {"import_s": report.seconds, "added": report.added, "rebuild_s": rebuild}


def timed_add_many(root: Path, vectors: np.ndarray, labels: np.ndarray, model: Path) -> float:
    from fashionrec_onnx import Catalog

    shutil.rmtree(root, ignore_errors=True)
    started = time.perf_counter()
    with Catalog.create(root, model, reduce_to=256) as catalog:
        for start in range(0, len(vectors), BATCH):
            count = min(BATCH, len(vectors) - start)
            keys = [f"item-{i:07d}" for i in range(start, start + count)]
            catalog.add_many(
                keys, np.asarray(vectors[start : start + count]), metadata=metadata(start, count, labels)
            )
    return time.perf_counter() - started


def markdown(results: dict[str, Any]) -> str:
    items, machine = results["items"], results["machine"]
    rows = [
        ("`import_vectors` of the Parquet folder", results["import_s"]),
        ("`add_many` of the same rows from memory (blocks of 20,000)", results["add_many_s"]),
        ("`rebuild()`: the reduced graph alone, from the stored vectors", results["rebuild_s"]),
        ("writing the Parquet files (not part of the import)", results["write_parquet_s"]),
    ]
    lines = [
        f"# Importing {items:,} ready vectors from Parquet ({machine['date']})",
        "",
        "| step | seconds | vectors/s |",
        "|---|---|---|",
        *(f"| {name} | {seconds:,.0f} | {items / seconds:,.0f} |" for name, seconds in rows),
        "",
        f"import / add_many: {results['import_s'] / results['add_many_s']:.2f}; the graph's share of the "
        f"import (rebuild / import): {results['rebuild_s'] / results['import_s']:.2f}.",
        "",
        f"{items:,} vectors of {results['dim']} dimensions (the scale probe's corpus, {results['real']:,} "
        "real Fashion-MNIST embeddings grown with structured vectors near them), metadata as "
        "`benchmarks.scale` gives it; every catalog `reduce_to=256`, float32 vectors.",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, shared. 1-minute load "
        f"{results['load'][0]:.1f} at the start, {results['load'][1]:.1f} at the end.",
        "",
        f"Command: `{results['command']}`",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.parquet_import", description=__doc__)
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--real", type=int, default=REAL, help="real embeddings the corpus grows from")
    parser.add_argument(
        "--work", type=Path, help="where the files and catalogs go (default: a temporary folder)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "parquet-import")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    vectors, labels, _ = corpus(args.items, args.real)
    model = catalog_model()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-import-"))
    load_start = os.getloadavg()[0]
    try:
        shutil.rmtree(work / "parquet", ignore_errors=True)
        written = write_parts(work / "parquet", vectors, labels, model)
        log.info("wrote %d vectors as Parquet in %.0f s", args.items, written)
        imported = timed_import(work / "imported", work / "parquet", model)
        log.info("import %s", imported)
        added = timed_add_many(work / "added", vectors, labels, model)
        log.info("add_many %.0f s", added)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    if imported["added"] != args.items:
        raise SystemExit(f"the import added {imported['added']} of {args.items} vectors")
    results = {
        "items": args.items,
        "dim": int(vectors.shape[1]),
        "real": min(args.items, len(labels)),
        "write_parquet_s": written,
        **imported,
        "add_many_s": added,
        "machine": machine_info(),
        "load": [load_start, os.getloadavg()[0]],
        "command": "python -m benchmarks.parquet_import " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    report = markdown(results)
    write_report(args.out, results, report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
