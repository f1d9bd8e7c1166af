"""Load test of `fashionrec serve` on 127.0.0.1: `python -m benchmarks.service_load`.

A fixed number of requests at concurrency 1, 4 and 16, JPEG photo uploads and key queries
("more like this"), with 1 and 2 worker processes, for the fp32 and the int8 224 px model;
beside it, in the same run, the model-only embedding rate (the bound for photo queries).
Models have seeded random weights (ImageNet weights cannot be downloaded here): speed does not
depend on the weights' values. The client runs on the same cores as the server, as a backend
on the same host would. Bounded: a few minutes. Writes benchmarks/results/service-load.{md,json}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from benchmarks.common import RAW, RESULTS, ROOT, machine_info

log = logging.getLogger("benchmarks.service_load")

FASHIONREC = str(Path(sys.executable).with_name("fashionrec"))
CONCURRENCY = (1, 4, 16)
PHOTO_SIZE = (600, 800)  # a product photo as a shop uploads it (width, height)


def models(calibration: int) -> dict[str, Path]:
    """The tests' 224 px fp32 model (cached) and its int8 version (made once, cached)."""
    from fashionrec_export.export_resnet50 import export_cached
    from fashionrec_export.quantize import quantize_int8

    fp32 = export_cached(
        ROOT / ".cache" / "test-models", "resnet50-224-seed0", weights="random", seed=0, size=224
    )
    int8 = RAW / "models" / f"{fp32.stem}-int8-cal{calibration}.onnx"
    if not int8.exists():
        int8.parent.mkdir(parents=True, exist_ok=True)
        quantize_int8(fp32, int8, count=calibration)
    return {"fp32": fp32, "int8": int8}


def jpeg_photos(folder: Path, per_category: int) -> dict[str, dict[str, str]]:
    """Sample images as 600x800 JPEGs (what a phone or a shop sends); their metadata by key."""
    from fashionrec_onnx.quality.datasets import SAMPLE_DIR

    metadata = {}
    for category in sorted(p.name for p in SAMPLE_DIR.iterdir() if p.is_dir()):
        (folder / category).mkdir(parents=True, exist_ok=True)
        for source in sorted((SAMPLE_DIR / category).glob("*.png"))[:per_category]:
            image = Image.open(source).convert("RGB").resize(PHOTO_SIZE, Image.Resampling.BICUBIC)
            key = f"{category}/{source.stem}.jpg"
            image.save(folder / key, "JPEG", quality=90)
            metadata[key] = {"category": category}
    return metadata


def model_only(model: Path, photos: list[bytes], batch: int = 16) -> dict[str, float]:
    """What the model alone does on these photos: one at a time (decode included, as a request)
    and in batches (the bound a batching server could approach)."""
    from fashionrec_onnx import Embedder

    with Embedder(model, threads=os.cpu_count()) as embedder:
        embedder.embed_one(photos[0])
        start = time.perf_counter()
        for data in photos:
            embedder.embed_one(data)
        one = len(photos) / (time.perf_counter() - start)
        pixels = np.stack([embedder.prepare(data) for data in photos[:batch]])
        embedder.embed_pixels(pixels)
        start = time.perf_counter()
        rounds = max(1, len(photos) // batch)
        for _ in range(rounds):
            embedder.embed_pixels(pixels, batch_size=batch)
        batched = rounds * batch / (time.perf_counter() - start)
    return {"one_at_a_time_per_s": one, f"batch{batch}_per_s": batched}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(catalog: Path, workers: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen(
        [FASHIONREC, "serve", "--catalog", str(catalog), "--port", str(port), "--workers", str(workers)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"fashionrec serve exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    process.kill()
    raise RuntimeError("fashionrec serve did not answer within 120 s")


async def load(url: str, requests: list[dict], concurrency: int) -> dict[str, float]:
    """Send ``requests`` (httpx keyword arguments for POST /search) with ``concurrency`` clients."""
    latencies: list[float] = []
    errors = 0
    queue: asyncio.Queue[dict] = asyncio.Queue()
    for request in requests:
        queue.put_nowait(request)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

        async def worker() -> None:
            nonlocal errors
            while not queue.empty():
                request = queue.get_nowait()
                start = time.perf_counter()
                try:
                    response = await client.post("/search", **request)
                    ok = response.status_code == 200 and bool(response.json()["hits"])
                except httpx.HTTPError:
                    ok = False
                latencies.append(time.perf_counter() - start)
                errors += not ok

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    ms = np.asarray(latencies) * 1000
    return {
        "requests": len(requests),
        "errors": errors,
        "per_second": len(requests) / wall,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
    }


def run(args: argparse.Namespace) -> dict[str, object]:
    from fashionrec_onnx import Catalog

    work = RAW / "service-load"
    shutil.rmtree(work, ignore_errors=True)
    metadata = jpeg_photos(work / "photos", args.per_category)
    keys = sorted(metadata)
    photos = [(work / "photos" / key).read_bytes() for key in keys]
    results: dict[str, object] = {
        "command": "python -m benchmarks.service_load " + " ".join(sys.argv[1:]),
        "weights": "random:seed=0 (speed does not depend on the weights' values)",
        "machine": machine_info(),
        "load_average_before": os.getloadavg(),
        "photos": {
            "count": len(photos),
            "size": PHOTO_SIZE,
            "mean_kb": float(np.mean([len(p) for p in photos]) / 1e3),
        },
        "runs": [],
        "model_only": {},
    }
    rng = np.random.default_rng(0)
    for precision, model in models(args.calibration).items():
        log.info("%s: indexing %d photos", precision, len(photos))
        catalog_dir = work / f"catalog-{precision}"
        with Catalog.create(catalog_dir, model) as catalog:
            catalog.index_folder(work / "photos", metadata=metadata, progress=False)
        log.info("%s: the model alone, before serving", precision)
        before = model_only(model, photos[: args.model_images])
        uploads = [
            {"files": {"image": ("photo.jpg", photos[i], "image/jpeg")}, "data": {"k": "10"}}
            for i in rng.integers(0, len(photos), args.uploads)
        ]
        by_key = [{"json": {"key": keys[i], "k": 10}} for i in rng.integers(0, len(keys), args.keys)]
        for workers in (1, 2):
            process, url = start_server(catalog_dir, workers)
            try:
                asyncio.run(load(url, uploads[:4] + by_key[:20], 2))  # warm up every worker
                for concurrency in CONCURRENCY:
                    for kind, requests in (("upload", uploads), ("key", by_key)):
                        figures = asyncio.run(load(url, requests, concurrency))
                        row = {
                            "model": precision,
                            "workers": workers,
                            "query": kind,
                            "concurrency": concurrency,
                        }
                        results["runs"].append({**row, **figures})  # type: ignore[attr-defined]
                        log.info("%s", {**row, **figures})
            finally:
                process.terminate()
                process.wait(timeout=30)
        log.info("%s: the model alone, after serving", precision)
        after = model_only(model, photos[: args.model_images])
        results["model_only"][precision] = {"before": before, "after": after}  # type: ignore[index]
    results["load_average_after"] = os.getloadavg()
    return results


def markdown(results: dict) -> str:
    machine = results["machine"]
    before = ", ".join(f"{v:.2f}" for v in results["load_average_before"])
    after = ", ".join(f"{v:.2f}" for v in results["load_average_after"])
    photos = results["photos"]
    lines = [
        "# `fashionrec serve` under load",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, shared and noisy; {machine['date']}; "
        f"load average {before} before, {after} after. onnxruntime {machine['onnxruntime']}.",
        f"Command: `{results['command']}`. Client and server on the same cores (127.0.0.1).",
        f"Models: ResNet50 224 px, {results['weights']}. Catalog: {photos['count']} photos; "
        f"uploads are {photos['size'][0]}x{photos['size'][1]} JPEGs (mean {photos['mean_kb']:.0f} kB), "
        "k=10. Each worker runs onnxruntime on cores / workers threads.",
        "",
        "| model | workers | query | concurrency | requests | errors | req/s | p50 ms | p99 ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["runs"]:
        lines.append(
            f"| {r['model']} | {r['workers']} | {r['query']} | {r['concurrency']} | {r['requests']} | "
            f"{r['errors']} | {r['per_second']:.1f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} |"
        )
    lines += [
        "",
        "The model alone in the same run, on the same photos, measured before and after the serving",
        "runs of that model (the machine is shared: the two differ by its load). One at a time",
        "includes decoding the JPEG, as a request does; batch 16 is the bound a batching server",
        "could approach. The last column compares the best upload rate of the service with the",
        "better of the two one-at-a-time rates.",
        "",
        "| model | one at a time img/s (before / after) | batch 16 img/s (before / after) "
        "| best upload req/s | service / model alone |",
        "|---|---|---|---|---|",
    ]
    for precision, rates in results["model_only"].items():
        uploads = [r for r in results["runs"] if r["model"] == precision and r["query"] == "upload"]
        best = max(r["per_second"] for r in uploads)
        one = [rates[when]["one_at_a_time_per_s"] for when in ("before", "after")]
        batched = [rates[when]["batch16_per_s"] for when in ("before", "after")]
        lines.append(
            f"| {precision} | {one[0]:.1f} / {one[1]:.1f} | {batched[0]:.1f} / {batched[1]:.1f} | "
            f"{best:.1f} | {best / max(one):.0%} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.service_load", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--per-category", type=int, default=20, help="photos per category in the catalog")
    parser.add_argument("--uploads", type=int, default=48, help="photo requests per cell")
    parser.add_argument("--keys", type=int, default=400, help="key requests per cell")
    parser.add_argument("--model-images", type=int, default=48, help="photos for the model-only rate")
    parser.add_argument("--calibration", type=int, default=16, help="int8 calibration images")
    parser.add_argument("--out", type=Path, default=RESULTS / "service-load")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request would load the client
    results = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    args.out.with_suffix(".md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
