"""Run the benchmark suite: ``python -m benchmarks`` (quick), ``--full``, or ``--tiny`` (tests).

Writes ``<out>/<mode>.json`` (every figure plus machine facts), ``<out>/<mode>.md`` (tables) and
PNG plots. Nothing here asserts a timing: speed is reported, never tested.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from benchmarks import (
    distributed,
    duplicates,
    embedding,
    filtered,
    ingest,
    products,
    quality,
    report,
    scale,
    search,
    speed_memory,
)
from benchmarks.common import FULL, QUICK, RAW, RESULTS, TINY, Sizes, bench_model, embed_corpus, machine_info

log = logging.getLogger("benchmarks")


def int8_of(model: Path, calibration_images: int) -> Path:
    from fashionrec_export.quantize import QUANTIZED_OPS, quantize_int8

    ops = "-".join(QUANTIZED_OPS).lower()
    out = RAW / "models" / f"{model.stem}-int8-{ops}-cal{calibration_images}.onnx"
    if not out.exists():
        quantize_int8(model, out, count=calibration_images)
    return out


def run(sizes: Sizes, out: Path, command: str) -> dict[str, object]:
    started = time.perf_counter()

    def stage(name: str) -> None:
        log.info("[%5.0fs] %s", time.perf_counter() - started, name)

    results: dict[str, object] = {
        "mode": sizes.name,
        "command": command,
        "weights": "random:seed=0 (ImageNet weights cannot be downloaded on this machine)",
        "machine": machine_info(),
    }
    speed_size = 64 if sizes.name == "tiny" else 224
    stage(f"exporting the {speed_size} px model and its int8 version")
    speed_model = bench_model(speed_size)
    speed_int8 = int8_of(speed_model, sizes.calibration)
    stage("embedding speed (Keras baseline, tf.function, onnxruntime, int8) and ingest")
    results["embedding"] = embedding.run(speed_model, speed_int8, sizes)
    stage("ingest: model-only vs end-to-end from JPEG files (fp32)")
    results["ingest"] = ingest.run(speed_model, sizes.ingest_photos, 32, sizes.rounds)
    if sizes.name == "quick":
        stage("embedding on Ray (1 and 2 workers) against one process, and importing vectors files")
        results["distributed"] = distributed.run(speed_model, photo_count=48, vector_count=5000)

    corpus_model = bench_model(sizes.corpus_size_px)
    corpus_int8 = int8_of(corpus_model, sizes.calibration)
    results["corpus_model"] = f"{sizes.corpus_size_px} px fp32"
    stage(f"embedding the Fashion-MNIST corpus ({sizes.corpus} train + {sizes.queries} test images)")
    corpus, corpus_labels = embed_corpus(corpus_model, "train", sizes.corpus)
    queries, query_labels = embed_corpus(corpus_model, "test", sizes.queries)

    stage("search: hnswlib vs sklearn brute force vs numpy")
    results["search"] = search.run(corpus, queries, sizes)

    stage("filtered search through the catalog vs masked sklearn brute force")
    filtered_n = max(n for n in sizes.search_sizes if n <= len(corpus))
    results["filtered"] = filtered.run(
        corpus_model, corpus[:filtered_n], corpus_labels[:filtered_n], queries, sizes.latency_queries
    )

    stage("int8 quality cost")
    subset = min(len(corpus), 10_000)
    corpus8, _ = embed_corpus(corpus_int8, "train", subset)
    queries8, _ = embed_corpus(corpus_int8, "test", sizes.queries)
    results["int8"] = {
        **speed_memory.int8_quality((corpus[:subset], queries), (corpus8, queries8)),
        "calibration": f"{sizes.calibration} images of the bundled Fashion-MNIST sample",
    }

    stage("retrieval quality")
    weights = "random:seed=0"
    results["quality"] = quality.run(
        {f"fashionrec fp32 {sizes.corpus_size_px} px": (corpus, queries)},
        corpus_labels,
        query_labels,
        {f"fashionrec fp32 {sizes.corpus_size_px} px": weights},
    )

    stage("near-duplicates planted in the corpus: found through the graph")
    from fashionrec_onnx.quality.datasets import load_split

    results["duplicates"] = duplicates.run(corpus_model, corpus, load_split("train")[0][: len(corpus)])

    stage("search grouped by product against plain search, on one catalog")
    results["products"] = products.run(corpus_model, corpus, corpus_labels, queries[: products.QUERIES])

    stage("PCA reduction and float16 storage")
    dims = (32, 16) if sizes.name == "tiny" else (256, 128)
    results["reduction"] = speed_memory.reduction(corpus, corpus_labels, queries, query_labels, sizes, dims)
    results["float16"] = speed_memory.float16(corpus, queries)
    if sizes.name != "tiny":  # the scale benchmark proper runs by hand at 1,000,000 (hours)
        stage("catalog at scale: 44,000 items through the public API, measured in a fresh process")
        scale.main(["--items", "44000", "--work", str(RAW / "scale"), "--out", str(out / "scale")])
        results["scale"] = f"{out / 'scale'}.md"
    results["seconds"] = time.perf_counter() - started

    out.mkdir(parents=True, exist_ok=True)
    (out / f"{sizes.name}.json").write_text(json.dumps(results, indent=2, default=float))
    plots = report.plot(results, out, sizes.name)
    (out / f"{sizes.name}.md").write_text(report.markdown(results, plots))
    stage(f"wrote {out / sizes.name}.json, .md and plots")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--full", action="store_true", help="larger sizes (200k and 1M vectors; hours)")
    mode.add_argument("--tiny", action="store_true", help="smoke run in seconds (used by the tests)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sizes = FULL if args.full else TINY if args.tiny else QUICK
    command = "python -m benchmarks" + (" --full" if args.full else " --tiny" if args.tiny else "")
    run(sizes, args.out, command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
