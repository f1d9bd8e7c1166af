"""What every benchmark shares: timing, machine facts, the models and the Fashion-MNIST corpus."""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
RAW = RESULTS / "raw"  # caches (models, embeddings): gitignored, never loaded with pickle


@dataclass(frozen=True)
class Sizes:
    """How much work each benchmark does in a mode."""

    name: str
    baseline_images: int  # Keras one-at-a-time images per round
    batch: int
    rounds: int
    ingest_photos: int
    corpus: int  # real embeddings for search and quality (Fashion-MNIST train)
    queries: int  # Fashion-MNIST test images used as queries
    search_sizes: tuple[int, ...]
    latency_queries: int
    ef_sweep: tuple[int, ...]
    corpus_size_px: int  # model input size used for the corpus embeddings
    calibration: int


TINY = Sizes("tiny", 2, 4, 1, 8, 600, 100, (500,), 20, (16, 64), 64, 8)
QUICK = Sizes(
    "quick", 12, 16, 3, 96, 44_000, 1_000, (10_000, 20_000, 44_000, 200_000), 200,
    (10, 20, 40, 80, 128, 200), 64, 64,
)  # fmt: skip
FULL = Sizes(
    "full", 24, 16, 5, 256, 60_000, 10_000, (10_000, 20_000, 44_000, 200_000, 1_000_000), 500,
    (10, 20, 40, 80, 128, 200, 400), 224, 200,
)  # fmt: skip


def timed(function: Callable[[], object]) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def summary_ms(seconds: list[float]) -> dict[str, float]:
    """Median and p95 in milliseconds of per-item times, plus the rate they imply."""
    values = np.asarray(seconds, dtype=np.float64) * 1000.0
    median = float(np.median(values))
    return {
        "median_ms": median,
        "p95_ms": float(np.percentile(values, 95)),
        "per_second": 1000.0 / median if median > 0 else float("inf"),
        "samples": len(values),
    }


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, object]:
    import hnswlib
    import onnxruntime
    import sklearn

    info: dict[str, object] = {
        "cpu": cpu_model(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "onnxruntime": onnxruntime.__version__,
        "hnswlib": getattr(hnswlib, "__version__", "0.8.0"),
        "scikit-learn": sklearn.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    try:  # the installed version, without importing TensorFlow (seconds and a GB of memory)
        info["tensorflow"] = metadata.version("tensorflow")
    except metadata.PackageNotFoundError:
        info["tensorflow"] = None
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    info["avx2"] = " avx2" in flags
    info["avx512_vnni"] = "avx512_vnni" in flags or "avx_vnni" in flags
    return info


def write_report(out: Path, results: dict[str, Any], markdown: str) -> None:
    """``out``.json (every figure) and ``out``.md (the tables) of one standalone benchmark."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2))
    out.with_suffix(".md").write_text(markdown)
    logging.getLogger("benchmarks").info("wrote %s", out.with_suffix(".md"))


def milvus_test_server(base_dir: Path) -> Any:
    """A Milvus 2.3 standalone server from PyPI (`tests/milvus_server.py`, the one the test suite
    starts), its data in ``base_dir``; call ``start()`` and ``stop()``."""
    import sys

    tests = str(ROOT / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    from milvus_server import TestServer

    return TestServer(base_dir)


def bench_model(size: int = 224, seed: int = 0) -> Path:
    """The random-weights model the benchmarks use (ImageNet weights cannot be had offline)."""
    from fashionrec_export.export_resnet50 import export_cached

    name = f"resnet50-{size}-seed{seed}"
    return export_cached(RAW / "models", name, weights="random", seed=seed, size=size)


def fashion_pixels(images: np.ndarray, size: int) -> np.ndarray:
    """Fashion-MNIST 28 px greyscale to the model's uint8 RGB input (squash resize, as the loader)."""
    from PIL import Image

    from fashionrec_onnx.images import prepare_image

    return np.stack([prepare_image(Image.fromarray(x).convert("RGB"), size, "squash") for x in images])


def embed_corpus(model: Path, split: str, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings and labels of the first ``count`` images of a split, cached as .npy."""
    from fashionrec_onnx import Embedder, read_model_info
    from fashionrec_onnx.quality.datasets import load_split

    info = read_model_info(model)
    cache = RAW / f"fmnist-{split}-{count}-{info.fingerprint}.npy"
    images, labels = load_split(split)
    images, labels = images[:count], labels[:count]
    if cache.exists():
        return np.load(cache, allow_pickle=False), labels
    vectors = []
    with Embedder(model) as embedder:
        for start in range(0, len(images), 2048):
            pixels = fashion_pixels(images[start : start + 2048], info.input_size)
            vectors.append(embedder.embed_pixels(pixels, batch_size=64))
    matrix = np.concatenate(vectors)
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.save(cache, matrix, allow_pickle=False)
    return matrix, labels
