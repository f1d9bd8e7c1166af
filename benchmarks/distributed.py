"""Embedding on Ray against one process, and importing vectors files into a catalog.

    python -m benchmarks.distributed [--photos 48] [--vectors 5000] [--rounds 1] [--model M.onnx]

Side by side in one run, on the same shop-sized JPEG files: ``Embedder.embed`` in this process
(2 onnxruntime threads), then ``embed_to_parquet`` with 1 worker of 2 threads and 2 workers of
1 thread on a local Ray started once. Each Ray job pays a fixed start (actors load the model);
the steady rate, from the first batch's start to the last one's end, shows what Ray itself
costs per image, and the start is reported apart. Import speed is vectors/s of
``import_vectors`` from Parquet into a new catalog, beside ``Catalog.add_many`` of the same
vectors from memory (the floor it builds on).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import bench_model
from benchmarks.ingest import make_photos

RAY_CONFIGS = {"ray 1 worker x 2 threads": (1, 2), "ray 2 workers x 1 thread": (2, 1)}
IN_PROCESS = "Embedder.embed in one process (2 threads)"


def _embed_in_process(model: Path, photos: list[Path], batch_size: int) -> float:
    from fashionrec_onnx import Embedder

    with Embedder(model) as embedder:
        embedder.embed(photos[:batch_size], batch_size)  # warm-up, as a long-running process would be
        started = time.perf_counter()
        embedder.embed(photos, batch_size)
        return time.perf_counter() - started


def _embed_on_ray(model: Path, folder: Path, out: Path, workers: int, threads: int, batch_size: int):
    from fashionrec_onnx.interchange.distributed import embed_to_parquet

    summary = embed_to_parquet(
        folder, model, out, workers=workers, threads_per_worker=threads, batch_size=batch_size, progress=False
    )
    assert not summary.failures, summary.failures
    return summary


def embedding(model: Path, photo_count: int, batch_size: int, rounds: int, tmp: Path) -> dict[str, object]:
    """Rounds interleave the methods, so a noisy neighbour slows them alike; medians are reported."""
    import ray

    from fashionrec_onnx.interchange.distributed import start_local_ray

    folder = tmp / "photos"
    photos = make_photos(folder, photo_count)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in (IN_PROCESS, *RAY_CONFIGS)}
    started = time.perf_counter()
    start_local_ray(num_cpus=2)
    ray_start = time.perf_counter() - started
    try:
        for number in range(rounds):
            seconds = _embed_in_process(model, photos, batch_size)
            runs[IN_PROCESS].append({"seconds": seconds, "steady_seconds": seconds})
            for name, (workers, threads) in RAY_CONFIGS.items():
                out = tmp / f"{workers}x{threads}-{number}"
                summary = _embed_on_ray(model, folder, out, workers, threads, batch_size)
                runs[name].append({"seconds": summary.seconds, "steady_seconds": summary.embedding_seconds})
    finally:
        ray.shutdown()
    results = {}
    for name, values in runs.items():
        seconds = float(np.median([v["seconds"] for v in values]))
        steady = float(np.median([v["steady_seconds"] for v in values]))
        results[name] = {
            "job_seconds": seconds,
            "per_second": photo_count / seconds,
            "steady_per_second": photo_count / steady,
            "worker_start_seconds": seconds - steady,
        }
    baseline = results[IN_PROCESS]["steady_per_second"]
    for value in results.values():
        value["steady_vs_one_process"] = value["steady_per_second"] / baseline
    return {
        "photos": photo_count,
        "photo_size": "1000x1500 JPEG q90",
        "batch_size": batch_size,
        "rounds": rounds,
        "ray_init_seconds": ray_start,
        "methods": results,
    }


def importing(model: Path, count: int, tmp: Path) -> dict[str, object]:
    from fashionrec_onnx import Catalog, read_model_info
    from fashionrec_onnx.interchange import vector_files as vf
    from fashionrec_onnx.interchange.vector_transfer import import_vectors

    info = read_model_info(model)
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(count, info.dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    keys = [f"item-{i:07d}" for i in range(count)]
    metadata = [{"category": str(i % 10)} for i in range(count)]
    table = vf.build_table(
        info.dim,
        info.fingerprint,
        keys=keys,
        vectors=vectors,
        metadata=[vf.metadata_text(m) for m in metadata],
    )
    vf.write_file(tmp / "vectors" / "part-0.parquet", table)
    started = time.perf_counter()
    read = sum(len(batch) for batch in vf.read_batches(tmp / "vectors"))
    read_seconds = time.perf_counter() - started
    with Catalog.create(tmp / "imported", model) as catalog:
        report = import_vectors(catalog, tmp / "vectors")
        again = import_vectors(catalog, tmp / "vectors")
    with Catalog.create(tmp / "in-memory", model) as catalog:
        started = time.perf_counter()
        for start in range(0, count, vf.ROW_GROUP_ROWS):
            part = slice(start, start + vf.ROW_GROUP_ROWS)
            catalog.add_many(keys[part], vectors[part], metadata=metadata[part])
        catalog.save()
        memory_seconds = time.perf_counter() - started
    assert read == report.added == count
    return {
        "vectors": count,
        "dim": info.dim,
        "read_parquet_per_second": count / read_seconds,
        "import_vectors_per_second": report.vectors_per_second,
        "reimport_unchanged_per_second": again.vectors_per_second,
        "add_many_from_memory_per_second": count / memory_seconds,
    }


def run(
    model: Path, photo_count: int, vector_count: int, batch_size: int = 16, rounds: int = 1
) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        return {
            "embedding": embedding(model, photo_count, batch_size, rounds, Path(tmp)),
            "import": importing(model, vector_count, Path(tmp)),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="ONNX model (default: random-weights 224 px)")
    parser.add_argument("--photos", type=int, default=48)
    parser.add_argument("--vectors", type=int, default=5000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    result = run(args.model or bench_model(224), args.photos, args.vectors, args.batch_size, args.rounds)
    print(json.dumps(result, indent=2))
    for name, value in result["embedding"]["methods"].items():
        print(
            f"{name}: {value['steady_per_second']:.1f} images/s once started "
            f"({value['steady_vs_one_process']:.2f}x one process), {value['per_second']:.1f} images/s for "
            f"the whole job ({value['worker_start_seconds']:.1f}s starting workers)"
        )
    imp = result["import"]
    print(
        f"import: {imp['import_vectors_per_second']:.0f} vectors/s (add_many from memory "
        f"{imp['add_many_from_memory_per_second']:.0f}, reading Parquet {imp['read_parquet_per_second']:.0f})"
    )


if __name__ == "__main__":
    main()
