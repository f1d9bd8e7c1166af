"""Model-only vs end-to-end ingest: how close do real JPEG files on disk get to the model's rate?

    python -m benchmarks.ingest [--photos 96] [--batch-size 32] [--model M.onnx]

Decoding (with JPEG draft mode) and resizing run in a thread pool while onnxruntime works on
the previous batch; the ratio printed is end-to-end images/s over model-only images/s.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.common import bench_model, summary_ms, timed


def make_photos(folder: Path, count: int, size: tuple[int, int] = (1000, 1500)) -> list[Path]:
    """Shop-photo-sized JPEGs (1000x1500) built from Fashion-MNIST garments on a light background."""
    from fashionrec_onnx.quality.datasets import SAMPLE_DIR

    rng = np.random.default_rng(0)
    sources = sorted(SAMPLE_DIR.glob("*/*.png"))
    folder.mkdir(parents=True, exist_ok=True)
    photos = []
    for number in range(count):
        garment = Image.open(sources[number % len(sources)]).convert("RGB").resize(size, Image.BICUBIC)
        pixels = np.asarray(garment).astype(np.int16)
        tint = rng.integers(-40, 40, 3)
        pixels = np.clip(255 - pixels * 0.8 + tint + rng.normal(0, 6, pixels.shape), 0, 255).astype(np.uint8)
        path = folder / f"photo-{number:04d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        photos.append(path)
    return photos


def run(model: Path, photo_count: int, batch_size: int, rounds: int) -> dict[str, object]:
    from fashionrec_onnx import Embedder

    with tempfile.TemporaryDirectory() as tmp:
        photos = make_photos(Path(tmp), photo_count)
        with Embedder(model) as embedder:
            pixels = np.stack([embedder.prepare(p) for p in photos])
            embedder.embed_pixels(pixels[:batch_size], batch_size)  # warm-up
            model_only, end_to_end = [], []
            for _ in range(rounds):  # interleaved, so both see the same machine load
                model_only.append(timed(lambda: embedder.embed_pixels(pixels, batch_size)) / len(photos))
                end_to_end.append(timed(lambda: embedder.embed(photos, batch_size)) / len(photos))
    only, e2e = summary_ms(model_only), summary_ms(end_to_end)
    return {
        "photos": photo_count,
        "photo_size": "1000x1500 JPEG q90",
        "batch_size": batch_size,
        "rounds": rounds,
        "model_only": only,
        "end_to_end": e2e,
        "ratio": e2e["per_second"] / only["per_second"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="ONNX model (default: random-weights 224 px)")
    parser.add_argument("--photos", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    result = run(args.model or bench_model(224), args.photos, args.batch_size, args.rounds)
    print(json.dumps(result, indent=2))
    print(
        f"model-only {result['model_only']['per_second']:.1f} img/s, end-to-end "
        f"{result['end_to_end']['per_second']:.1f} img/s: ratio {result['ratio']:.2f}"
    )


if __name__ == "__main__":
    main()
