"""Load test of `fashionrec serve` on 127.0.0.1: `python -m benchmarks.service_load`.

A fixed number of requests at concurrency 1, 4 and 16, JPEG photo uploads and key queries
("more like this"), with 1 and 2 worker processes, for the fp32 and the int8 224 px model;
beside it, in the same run, the model-only embedding rate (the bound for photo queries).
Models have seeded random weights (ImageNet weights cannot be downloaded here): speed does not
depend on the weights' values. The client runs on the same cores as the server, as a backend
on the same host would. Bounded: a few minutes. Writes benchmarks/results/service-load.{md,json}.

The load generator is lean (asyncio streams, requests encoded once, keep-alive connections):
about 0.07 ms of CPU per request, where httpx's AsyncClient took about 2 ms, which on these two
shared cores was most of the latency once 16 requests were in flight. A comparison in the same
run puts key queries at concurrency 16 side by side: the server untuned (h11, asyncio, no GC
freeze: `FASHIONREC_SERVE_UNTUNED=1`) and as shipped, each driven by httpx and by the lean
client, in interleaved rounds; medians over the rounds. `--compare-only` runs just that.
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
from fashionrec_onnx.service.config import UNTUNED_ENV

log = logging.getLogger("benchmarks.service_load")

FASHIONREC = str(Path(sys.executable).with_name("fashionrec"))
CONCURRENCY = (1, 4, 16)
PHOTO_SIZE = (600, 800)  # a product photo as a shop uploads it (width, height)


def models(calibration: int, int8: bool = True) -> dict[str, Path]:
    """The tests' 224 px fp32 model (cached) and its int8 version (made once, cached)."""
    from fashionrec_export.export_resnet50 import export_cached
    from fashionrec_export.quantize import quantize_int8

    fp32 = export_cached(
        ROOT / ".cache" / "test-models", "resnet50-224-seed0", weights="random", seed=0, size=224
    )
    if not int8:
        return {"fp32": fp32}
    quantized = RAW / "models" / f"{fp32.stem}-int8-cal{calibration}.onnx"
    if not quantized.exists():
        quantized.parent.mkdir(parents=True, exist_ok=True)
        quantize_int8(fp32, quantized, count=calibration)
    return {"fp32": fp32, "int8": quantized}


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


def start_server(catalog: Path, workers: int, untuned: bool = False) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != UNTUNED_ENV}
    if untuned:
        env[UNTUNED_ENV] = "1"
    process = subprocess.Popen(
        [FASHIONREC, "serve", "--catalog", str(catalog), "--port", str(port), "--workers", str(workers)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
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


def encoded(url: str, request: dict) -> bytes:
    """One POST /search (httpx keyword arguments) as the bytes sent on the wire, encoded once."""
    built = httpx.Request("POST", f"{url}/search", **request)
    body = built.read()
    head = "".join(f"{name}: {value}\r\n" for name, value in built.headers.items())
    return f"POST /search HTTP/1.1\r\n{head}\r\n".encode() + body


async def lean_load(url: str, requests: list[dict], concurrency: int) -> dict[str, float]:
    """The same as `load`, with a client that costs next to nothing: ``concurrency`` keep-alive
    connections send requests encoded beforehand and read status, length and body."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    wire = [encoded(url, request) for request in requests]
    pending = list(reversed(wire))
    latencies: list[float] = []
    errors = 0

    async def worker() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            while pending:
                data = pending.pop()
                start = time.perf_counter()
                writer.write(data)
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                body = await reader.readexactly(length)
                ok = head.startswith(b"HTTP/1.1 200") and bool(json.loads(body)["hits"])
                latencies.append(time.perf_counter() - start)
                errors += not ok
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return figures(latencies, errors, len(requests), time.perf_counter() - start)


def figures(latencies: list[float], errors: int, requests: int, wall: float) -> dict[str, float]:
    ms = np.asarray(latencies) * 1000
    return {
        "requests": requests,
        "errors": errors,
        "per_second": requests / wall,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
    }


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
    return figures(latencies, errors, len(requests), wall)


CLIENTS = {"httpx": load, "lean": lean_load}
MEDIANS = ("per_second", "p50_ms", "p99_ms")


def compare(catalog: Path, requests: list[dict], rounds: int) -> dict[str, object]:
    """Key queries at concurrency 16, one worker: server untuned / as shipped x client httpx /
    lean, in interleaved rounds (the machine's load drifts); medians over the rounds."""
    cells: dict[str, list[dict[str, float]]] = {}
    for round_ in range(rounds):
        for server in ("untuned", "shipped"):
            process, url = start_server(catalog, 1, untuned=server == "untuned")
            try:
                asyncio.run(lean_load(url, requests[:40], 2))  # warm up
                for client, run_load in CLIENTS.items():
                    result = asyncio.run(run_load(url, requests, 16))
                    cells.setdefault(f"{server}/{client}", []).append(result)
                    log.info("compare round %d %s/%s %s", round_, server, client, result)
            finally:
                process.terminate()
                process.wait(timeout=30)
    return {
        cell: {
            "rounds": results,
            **{name: float(np.median([r[name] for r in results])) for name in MEDIANS},
            "errors": sum(r["errors"] for r in results),
        }
        for cell, results in cells.items()
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
    for precision, model in models(args.calibration, int8=not args.compare_only).items():
        log.info("%s: indexing %d photos", precision, len(photos))
        catalog_dir = work / f"catalog-{precision}"
        with Catalog.create(catalog_dir, model) as catalog:
            catalog.index_folder(work / "photos", metadata=metadata, progress=False)
        by_key = [{"json": {"key": keys[i], "k": 10}} for i in rng.integers(0, len(keys), args.keys)]
        if precision == "fp32":
            results["compare"] = compare(catalog_dir, by_key, args.rounds)
        if args.compare_only:
            continue
        log.info("%s: the model alone, before serving", precision)
        before = model_only(model, photos[: args.model_images])
        uploads = [
            {"files": {"image": ("photo.jpg", photos[i], "image/jpeg")}, "data": {"k": "10"}}
            for i in rng.integers(0, len(photos), args.uploads)
        ]
        for workers in (1, 2):
            process, url = start_server(catalog_dir, workers)
            try:
                asyncio.run(lean_load(url, uploads[:4] + by_key[:20], 2))  # warm up every worker
                for concurrency in CONCURRENCY:
                    for kind, requests in (("upload", uploads), ("key", by_key)):
                        measured = asyncio.run(lean_load(url, requests, concurrency))
                        row = {
                            "model": precision,
                            "workers": workers,
                            "query": kind,
                            "concurrency": concurrency,
                        }
                        results["runs"].append({**row, **measured})  # type: ignore[attr-defined]
                        log.info("%s", {**row, **measured})
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
        "k=10. Each worker runs onnxruntime on cores / workers threads. The client is the lean one",
        "(see the comparison at the end).",
    ]
    if results.get("runs"):
        lines += served_tables(results)
    if "compare" in results:
        lines += comparison(results["compare"], results["command"])
    return "\n".join(lines) + "\n"


def served_tables(results: dict) -> list[str]:
    lines = [
        "",
        "| model | workers | query | concurrency | requests | errors | req/s | p50 ms | p99 ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results.get("runs", []):
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
    for precision, rates in results.get("model_only", {}).items():
        uploads = [r for r in results["runs"] if r["model"] == precision and r["query"] == "upload"]
        best = max(r["per_second"] for r in uploads)
        one = [rates[when]["one_at_a_time_per_s"] for when in ("before", "after")]
        batched = [rates[when]["batch16_per_s"] for when in ("before", "after")]
        lines.append(
            f"| {precision} | {one[0]:.1f} / {one[1]:.1f} | {batched[0]:.1f} / {batched[1]:.1f} | "
            f"{best:.1f} | {best / max(one):.0%} |"
        )
    return lines


def comparison(cells: dict, command: str) -> list[str]:
    """Key queries at concurrency 16, before and after, side by side."""
    lines = [
        "",
        "## Key queries at concurrency 16: before and after, in the same run",
        "",
        "One worker, fp32 catalog, k=10. Server *untuned*: uvicorn's h11 and asyncio loop, no GC freeze",
        "(as before); *shipped*: httptools, uvloop and the heap frozen after startup. Client *httpx*:",
        "one AsyncClient (about 2 ms of CPU per request, on the same two cores); *lean*: asyncio",
        "streams with requests encoded once. Rounds interleave the four cells; the figures are medians",
        f"over the rounds, every round's p99 beside them. Command: `{command}`.",
        "",
        "| server | client | req/s | p50 ms | p99 ms | p99 of each round | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for cell, row in cells.items():
        server, client = cell.split("/")
        each = ", ".join(f"{r['p99_ms']:.0f}" for r in row["rounds"])
        lines.append(
            f"| {server} | {client} | {row['per_second']:.0f} | {row['p50_ms']:.1f} | {row['p99_ms']:.1f} | "
            f"{each} | {row['errors']} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.service_load", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--per-category", type=int, default=20, help="photos per category in the catalog")
    parser.add_argument("--uploads", type=int, default=48, help="photo requests per cell")
    parser.add_argument("--keys", type=int, default=400, help="key requests per cell")
    parser.add_argument("--model-images", type=int, default=48, help="photos for the model-only rate")
    parser.add_argument("--calibration", type=int, default=16, help="int8 calibration images")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the before/after comparison")
    parser.add_argument(
        "--compare-only", action="store_true", help="only the before/after comparison of key queries"
    )
    parser.add_argument("--out", type=Path, help="default: results/service-load(-compare)")
    args = parser.parse_args(argv)
    args.out = args.out or RESULTS / ("service-load-compare" if args.compare_only else "service-load")
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
