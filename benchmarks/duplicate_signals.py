"""Which signal tells a planted copy from a look-alike? Embedding similarity and a 64-bit pHash,
per kind of copy, against the non-duplicate pairs among each item's nearest neighbours.

The same corpus and copies as `benchmarks.duplicates` (Fashion-MNIST train, random-weight 64 px
model), but exact: every item's 8 nearest neighbours by brute force. For each kind: the copy's
similarity to its original and their Hamming distance (percentiles), and whether the original is
among the copy's (or the copy among the original's) 8 nearest. Then, for rules "Hamming <= T and
similarity >= S", the recall of each kind and how many non-duplicate neighbour pairs also pass.
``python -m benchmarks.duplicate_signals --items 44000`` (about 8 minutes of matrix products).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.common import RESULTS, bench_model, embed_corpus, machine_info, write_report
from benchmarks.duplicates import KINDS, plant
from benchmarks.phash import hamming, image_hashes
from fashionrec_onnx import Embedder
from fashionrec_onnx.images import prepare_image

log = logging.getLogger("benchmarks")
NEIGHBOURS = 8
RULES = [(t, s) for t in (4, 8, 12, 64) for s in (0.99, 0.998, 0.999)]


def nearest(vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's k nearest other rows (exact, inner product of unit vectors)."""
    found = np.zeros((len(vectors), k), np.int64)
    similar = np.zeros((len(vectors), k), np.float32)
    for start in range(0, len(vectors), 2048):
        block = vectors[start : start + 2048] @ vectors.T
        block[np.arange(len(block)), np.arange(start, start + len(block))] = -np.inf
        top = np.argpartition(-block, k, axis=1)[:, :k]
        found[start : start + len(block)], similar[start : start + len(block)] = (
            top,
            np.take_along_axis(block, top, 1),
        )
    return found, similar


def run(size: int, items: int) -> dict:
    from fashionrec_onnx.quality.datasets import load_split

    model = bench_model(size)
    corpus, _ = embed_corpus(model, "train", items)
    images = load_split("train")[0][:items]
    chosen, copies, kinds = plant(images)
    copy_pixels = np.stack([prepare_image(c, size, "squash") for c in copies])
    with Embedder(model) as embedder:
        vectors = np.concatenate([corpus, embedder.embed_pixels(copy_pixels, 64)])
    originals = np.stack([prepare_image(Image.fromarray(x).convert("RGB"), size, "squash") for x in images])
    hashes = np.concatenate([image_hashes(originals), image_hashes(copy_pixels)])
    found, similar = nearest(vectors, NEIGHBOURS)
    copy_rows = np.arange(items, items + len(copies))
    kinds_array = np.asarray(kinds)
    pair_similarity = np.sum(vectors[copy_rows] * vectors[chosen], axis=1)
    pair_hamming = hamming(hashes[copy_rows], hashes[chosen])
    neighbour = np.array(
        [o in found[c] or c in found[o] for c, o in zip(copy_rows.tolist(), chosen.tolist())]
    )
    per_kind = {}
    for kind in KINDS:
        mask = kinds_array == kind
        per_kind[kind] = {
            "similarity_p0_p5_p50": np.percentile(pair_similarity[mask], [0, 5, 50]).tolist(),
            "hamming_p50_p95_p100": np.percentile(pair_hamming[mask], [50, 95, 100]).tolist(),
            "in_8_nearest": float(neighbour[mask].mean()),
        }
    first = np.repeat(np.arange(len(vectors)), NEIGHBOURS)
    second, sims = found.ravel(), similar.ravel()
    truth = {(int(c), int(o)) for c, o in zip(copy_rows, chosen)}
    truth |= {(o, c) for c, o in truth}
    false = np.array([(a, b) not in truth for a, b in zip(first.tolist(), second.tolist())])
    a, b, s = np.minimum(first, second)[false], np.maximum(first, second)[false], sims[false]
    _, unique = np.unique(a * len(vectors) + b, return_index=True)
    a, b, s = a[unique], b[unique], s[unique]
    h = hamming(hashes[a], hashes[b])
    rules = []
    for t, threshold in RULES:
        passes = (pair_hamming <= t) & (pair_similarity >= threshold) & neighbour
        rules.append(
            {
                "hamming_at_most": t,
                "similarity_at_least": threshold,
                "false_pairs": int(((h <= t) & (s >= threshold)).sum()),
                "recall": {kind: float(passes[kinds_array == kind].mean()) for kind in KINDS},
            }
        )
    return {"items": len(vectors), "planted": len(copies), "per_kind": per_kind, "rules": rules,
            "non_duplicate_neighbour_pairs": len(a)}  # fmt: skip


def markdown(results: dict) -> str:
    corpus = results["items"] - results["planted"]
    lines = [
        f"# Near-duplicate signals (`python -m benchmarks.duplicate_signals --items {corpus}`)",
        "",
        f"{results['items']:,} items, {results['planted']} planted copies; exact 8 nearest neighbours.",
        "",
        "| kind | similarity to original p0 / p5 / p50 | pHash Hamming p50 / p95 / max | in 8 nearest |",
        "| --- | --- | --- | --- |",
    ]
    for kind, row in results["per_kind"].items():
        sim = " / ".join(f"{v:.4f}" for v in row["similarity_p0_p5_p50"])
        ham = " / ".join(f"{v:.0f}" for v in row["hamming_p50_p95_p100"])
        lines.append(f"| {kind} | {sim} | {ham} | {row['in_8_nearest']:.3f} |")
    lines += ["", "| rule | non-duplicate pairs passing | " + " | ".join(KINDS) + " |",
              "| --- " * (len(KINDS) + 2) + "|"]  # fmt: skip
    for rule in results["rules"]:
        recall = " | ".join(f"{rule['recall'][k]:.3f}" for k in KINDS)
        lines.append(
            f"| Hamming <= {rule['hamming_at_most']}, similarity >= {rule['similarity_at_least']} | "
            f"{rule['false_pairs']:,} | {recall} |"
        )
    machine = results["machine"]
    lines += ["", f"Machine: {machine['cpu']}, {machine['cores']} cores, load {machine['load_average']}, "
              f"{machine['date']}.", ""]  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.duplicate_signals", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--items", type=int, default=44_000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--out", type=Path, default=RESULTS / "duplicate-signals.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    results = {**run(args.size, args.items), "machine": machine_info()}
    write_report(args.out, results, markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
