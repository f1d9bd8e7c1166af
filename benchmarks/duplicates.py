"""Near-duplicates planted in a Fashion-MNIST catalog: are they found, and how fast?

Some train images get one copy each, cycling through four kinds: resized (2x, bicubic),
JPEG-recompressed (quality 75), re-saved as PNG (same pixels), and slightly cropped (one pixel off
the left and top of the 28 px image, about 7% of the area). Copies and the corpus go into one
catalog; `Catalog.duplicates` then groups it, at the calibrated threshold and at fixed ones.
Measured like imagededup evaluates its methods: precision and recall of duplicate pairs (every
pair inside a found group counts as found), against the planted pairs plus the pixel-identical
images Fashion-MNIST already holds. Run alone: ``python -m benchmarks.duplicates --items 44000``.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.common import RESULTS, bench_model, embed_corpus, timed
from fashionrec_onnx import Catalog, Embedder, read_model_info
from fashionrec_onnx.images import prepare_image
from fashionrec_onnx.quality.evaluation import group_precision_recall, pairs_of_groups

log = logging.getLogger("benchmarks")

KINDS = ("resized", "jpeg", "png", "cropped")
PLANTED_SHARE = 0.02  # of the corpus that gets a copy
THRESHOLDS = (0.9995, 0.999, 0.998)  # fixed thresholds beside the calibrated one


def copy_of(image: np.ndarray, kind: str) -> Image.Image:
    """One near-duplicate of a 28 px grey Fashion-MNIST image, as a shop's re-upload would be."""
    original = Image.fromarray(image).convert("RGB")
    if kind == "resized":
        return original.resize((56, 56), Image.Resampling.BICUBIC)
    if kind == "cropped":
        return original.crop((1, 1, 28, 28))
    buffer = io.BytesIO()
    original.save(buffer, "JPEG" if kind == "jpeg" else "PNG", quality=75)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def plant(images: np.ndarray, seed: int = 0) -> tuple[np.ndarray, list[Image.Image], list[str]]:
    """Which images get a copy, the copies, and their kinds (cycling, so each kind is a quarter)."""
    count = max(len(KINDS), round(len(images) * PLANTED_SHARE))
    chosen = np.sort(np.random.default_rng(seed).choice(len(images), count, replace=False))
    kinds = [KINDS[i % len(KINDS)] for i in range(count)]
    return chosen, [copy_of(images[i], kind) for i, kind in zip(chosen, kinds)], kinds


def identical_groups(images: np.ndarray) -> list[list[int]]:
    """Images of the corpus that are byte-identical already (true duplicates nobody planted)."""
    seen: dict[bytes, list[int]] = defaultdict(list)
    for row, image in enumerate(images):
        seen[image.tobytes()].append(row)
    return [rows for rows in seen.values() if len(rows) > 1]


def truth(chosen: np.ndarray, identical: list[list[int]]) -> set[tuple[str, str]]:
    """Pairs that are duplicates: planted copy with original, and within identical groups
    (transitively: a copy of one of two identical images duplicates both)."""
    group_of: dict[int, int] = {}
    for number, rows in enumerate(identical):
        for row in rows:
            group_of[row] = number
    groups: dict[int, set[str]] = defaultdict(set)
    for number, rows in enumerate(identical):
        groups[number].update(str(row) for row in rows)
    for copy, original in enumerate(chosen.tolist()):
        number = group_of.setdefault(original, len(identical) + copy)
        groups[number].update({str(original), f"copy-{copy}"})
    return pairs_of_groups(groups.values())


def embed_copies(model: Path, copies: list[Image.Image]) -> np.ndarray:
    size = read_model_info(model).input_size
    with Embedder(model) as embedder:
        return embedder.embed_pixels(np.stack([prepare_image(c, size, "squash") for c in copies]), 64)


def by_kind(chosen: np.ndarray, kinds: list[str]) -> dict[str, set[tuple[str, str]]]:
    """The planted pairs of each kind (copy with its original)."""
    pairs: dict[str, set[tuple[str, str]]] = {kind: set() for kind in KINDS}
    for copy, (original, kind) in enumerate(zip(chosen.tolist(), kinds)):
        pairs[kind].add(tuple(sorted((str(original), f"copy-{copy}"))))
    return pairs


def measure(report, expected: set[tuple[str, str]], planted: dict[str, set[tuple[str, str]]]) -> dict:
    """imagededup's measures for one report, and the recall of each kind of copy."""
    groups = [group.keys for group in report]
    precision, recall = group_precision_recall(groups, expected)
    return {
        "threshold": report.threshold,
        "calibrated": report.calibrated,
        "groups": len(report),
        "pairs_found": sum(len(keys) * (len(keys) - 1) // 2 for keys in groups),
        "precision": precision,
        "recall": recall,
        "recall_by_kind": {kind: group_precision_recall(groups, pairs)[1] for kind, pairs in planted.items()},
        "seconds": report.seconds,
    }


def run(model: Path, corpus: np.ndarray, images: np.ndarray) -> dict[str, object]:
    """``corpus``: the embeddings of ``images`` (Fashion-MNIST train, in order)."""
    chosen, copies, kinds = plant(images)
    identical = identical_groups(images)
    expected = truth(chosen, identical)
    planted = by_kind(chosen, kinds)
    vectors = np.concatenate([corpus, embed_copies(model, copies)])
    keys = [str(i) for i in range(len(corpus))] + [f"copy-{i}" for i in range(len(copies))]
    thresholds: list[dict[str, object]] = []
    results: dict[str, object] = {
        "items": len(keys),
        "planted": len(copies),
        "kinds": {kind: kinds.count(kind) for kind in KINDS},
        "identical_pairs_in_dataset": len(pairs_of_groups(map(str, rows) for rows in identical)),
        "true_pairs": len(expected),
        "thresholds": thresholds,
    }
    with tempfile.TemporaryDirectory() as tmp, Catalog.create(Path(tmp) / "catalog", model) as catalog:
        results["build_s"] = timed(lambda: catalog.add_many(keys, vectors))
        for threshold in (None, *THRESHOLDS):
            report = catalog.duplicates(threshold)
            results["neighbours"] = report.neighbours
            thresholds.append(measure(report, expected, planted))
            log.info("duplicates at %.4f: %s", report.threshold, thresholds[-1])
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.duplicates", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--items", type=int, default=44_000, help="Fashion-MNIST train images in the catalog")
    parser.add_argument("--size", type=int, default=64, help="model input size (px)")
    parser.add_argument("--out", type=Path, default=RESULTS / "duplicates.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from fashionrec_onnx.quality.datasets import load_split

    model = bench_model(args.size)
    started = time.perf_counter()
    corpus, _ = embed_corpus(model, "train", args.items)
    images = load_split("train")[0][: args.items]
    results = {"model": f"{args.size} px, random:seed=0", **run(model, corpus, images)}
    results["seconds"] = time.perf_counter() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
