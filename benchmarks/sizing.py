"""How long, how much memory and disk: indexing 1,000 / 50,000 / 1,000,000 images, fp32 and int8.

    python -m benchmarks.sizing            # about 15 minutes on 2 cores

What is measured, what is derived, each labelled in the table:
- **1,000 images, measured**: `fashionrec index` on the bundled sample (1,000 PNGs) with the 224 px
  fp32 model and its int8 version, each in its own process, interleaved and repeated; wall time
  (median), peak memory of that process (``ru_maxrss`` from ``wait4``), catalog size on disk.
- **50,000, derived from measured parts**: the embedding time is 50,000 / the images-per-second
  rate measured above (embedding is per image: linear); the catalog's own cost (storing, graph)
  is measured by adding 50,000 real-image embeddings through ``add_many`` in a fresh process
  (time, ``ru_maxrss``, disk), with the default settings (float32 vectors, full graph).
- **1,000,000, derived**: embedding time as above; the catalog in the configuration a million
  needs (``--reduce 256 --vector-dtype float16``) from ``results/scale.json`` (measured by
  ``benchmarks.scale`` at 1,000,000: import time, disk, memory after open). Peak memory while
  indexing is the larger of the model's (measured) and the catalog's (scale run).
Random weights: speed does not depend on the weights' values.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import RAW, RESULTS, bench_model, embed_corpus, machine_info, write_report
from benchmarks.search import structured_blocks

log = logging.getLogger("benchmarks.sizing")

REPEATS = 2
MIDDLE = 50_000
MILLION = 1_000_000


def disk_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


# A small launcher between this process and the measured one: Linux charges a child with the
# peak resident memory of the process it was forked from (kept across exec), so a child forked
# from this big process would report this process's peak as its own.
LAUNCHER = (
    "import resource, subprocess, sys\n"
    "done = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)\n"
    "sys.stderr.write(done.stderr.decode(errors='replace')[-2000:])\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)\n"
    "sys.exit(done.returncode)\n"
)


def run_measured(command: list[str]) -> tuple[float, int]:
    """Wall seconds and peak resident memory (``ru_maxrss``, bytes) of one child process."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", LAUNCHER, *command], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {done.stderr}")
    return seconds, int(done.stdout.strip().splitlines()[-1])


def index_sample(models: dict[str, Path], work: Path) -> dict[str, dict[str, Any]]:
    from fashionrec_onnx.quality.datasets import sample_dir

    sample = sample_dir()
    runs: dict[str, list[tuple[float, int, int]]] = {name: [] for name in models}
    for repeat in range(REPEATS):
        for name, model in models.items():  # interleaved: the machine's load falls on both
            catalog = work / f"{name}-{repeat}"
            shutil.rmtree(catalog, ignore_errors=True)
            command = [sys.executable, "-m", "fashionrec_onnx.cli", "index", str(sample),
                       "--catalog", str(catalog), "--model", str(model),
                       "--metadata", str(sample / "labels.csv"), "--quiet"]  # fmt: skip
            seconds, peak = run_measured(command)
            runs[name].append((seconds, peak, disk_bytes(catalog)))
            log.info("index 1,000 with %s: %.1f s, %.0f MB", name, seconds, peak / 1e6)
    return {
        name: {
            "seconds": float(np.median([s for s, _, _ in done])),
            "images_per_s": 1000 / float(np.median([s for s, _, _ in done])),
            "peak_rss_bytes": int(max(p for _, p, _ in done)),
            "disk_bytes": int(done[0][2]),
            "runs_s": [s for s, _, _ in done],
        }
        for name, done in runs.items()
    }


def store_vectors(count: int, work: Path) -> dict[str, Any]:
    """The catalog's own cost at ``count`` items (default settings), in a fresh process."""
    vectors = work / "vectors.npy"
    real, _ = embed_corpus(bench_model(64), "train", 44_000)
    matrix = np.concatenate([real, *structured_blocks(real, count - len(real), seed=1)])[:count]
    np.save(vectors, matrix.astype(np.float32), allow_pickle=False)
    catalog = work / f"store-{count}"
    shutil.rmtree(catalog, ignore_errors=True)
    model = sorted((RAW / "models").glob("resnet50-64-seed0-*.onnx"))
    model = [m for m in model if "int8" not in m.name][:1] or [bench_model(64)]
    code = (
        "import numpy as np, sys\n"
        "from fashionrec_onnx import Catalog\n"
        "v = np.load(sys.argv[1])\n"
        "with Catalog.create(sys.argv[2], sys.argv[3]) as c:\n"
        "    for s in range(0, len(v), 10_000):\n"
        "        c.add_many([f'item-{i:07d}' for i in range(s, s + len(v[s:s + 10_000]))], v[s:s + 10_000])\n"
    )
    seconds, peak = run_measured([sys.executable, "-c", code, str(vectors), str(catalog), str(model[0])])
    return {"items": count, "seconds": seconds, "peak_rss_bytes": peak, "disk_bytes": disk_bytes(catalog)}


def row(
    images: int, model: str, how: str, seconds: float, ram: float, disk: float, catalog: str
) -> dict[str, Any]:
    return {"images": images, "model": model, "how": how, "hours": seconds / 3600, "ram_gb": ram / 1e9,
            "disk_gb": disk / 1e9, "catalog": catalog}  # fmt: skip


def table(measured: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of the sizing table: 1,000 measured, 50,000 and 1,000,000 derived (see the docstring)."""
    store, scale = measured["store_50k"], measured["scale_1m"]
    rows = []
    for name, index in measured["index_1k"].items():
        rate, model_ram = index["images_per_s"], index["peak_rss_bytes"]
        rows.append(row(1000, name, "measured", index["seconds"], model_ram, index["disk_bytes"], "default"))
        seconds = MIDDLE / rate + store["seconds"]
        ram = max(model_ram, store["peak_rss_bytes"])
        rows.append(row(MIDDLE, name, "derived", seconds, ram, store["disk_bytes"], "default"))
        if scale:
            seconds = MILLION / rate + scale["build_s"]
            ram = max(model_ram, scale["rss_peak_exact_and_check_mb"] * 1e6)
            disk = scale["disk_mb"] * 1e6
            rows.append(
                row(MILLION, name, "derived", seconds, ram, disk, "--reduce 256 --vector-dtype float16")
            )
    return rows


def markdown(results: dict[str, Any]) -> str:
    machine = results["machine"]
    lines = [
        "# Sizing: time, memory and disk to index N images",
        "",
        f"Measured {results['date']} on {machine['cpu']} ({machine['cores']} cores, shared), load average "
        f"{machine['load_average']} at the start and {results['load_average_end']} at the end. "
        "224 px ResNet50 (fp32, and int8 by static quantisation), random weights. See "
        "`benchmarks/sizing.py` for what is measured and what is derived.",
        "",
        "| images | model | catalog | how | time | peak RAM | disk |",
        "|---:|---|---|---|---:|---:|---:|",
    ]
    for row in results["table"]:
        hours = row["hours"]
        time_text = (
            f"{hours * 3600:.0f} s"
            if hours < 0.1
            else f"{hours * 60:.0f} min"
            if hours < 2
            else f"{hours:.1f} h"
        )
        lines.append(
            f"| {row['images']:,} | {row['model']} | {row['catalog']} | {row['how']} | {time_text} | "
            f"{row['ram_gb']:.2f} GB | {row['disk_gb']:.2f} GB |"
        )
    index = results["index_1k"]
    rates = ", ".join(f"{name} {v['images_per_s']:.1f} images/s" for name, v in index.items())
    lines += ["", f"Indexing rate (1,000 sample images, median of {REPEATS} runs): {rates}.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sizing", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS / "sizing")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from benchmarks.__main__ import int8_of

    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine_info(),
    }
    fp32 = bench_model(224)
    models = {"fp32": fp32, "int8": int8_of(fp32, 100)}
    with tempfile.TemporaryDirectory(dir=RAW) as tmp:
        work = Path(tmp)
        results["index_1k"] = index_sample(models, work)
        results["store_50k"] = store_vectors(MIDDLE, work)
    scale_file = RESULTS / "scale.json"
    runs = json.loads(scale_file.read_text())["runs"] if scale_file.exists() else []
    results["scale_1m"] = next((r for r in runs if r["items"] == MILLION), None)
    results["table"] = table(results)
    results["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    write_report(args.out, results, markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
