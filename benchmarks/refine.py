"""Refinement learned from labels: does a projection learned on train categories improve "more like
this" on held-out images, beside raw pixels, the base model and PCA?

Fashion-MNIST, random-weight ResNet50 (the default 224 px export, seed 0). The projection is
learned on the stored embeddings of ``--train`` train images and their categories (`fashionrec
refine`'s learning: 20% of them held out for early stopping), then every method ranks the first
``--test`` test images against each other: precision@5 and mAP@10 by category. The refined ONNX
model (base graph + projection + L2 norm) embeds ``--photos`` test images itself, to show it
searches by photo as the projection of the stored vectors says.
``--products``: each product is several augmented views (crop, flip, light) of one train image at
64 px; whole products are held out; recall@1 of a view finding another view of its product.
``--timing``: learning time on 60,000 x 2048 stored vectors (all train images, 64 px model).

    python -m benchmarks.refine [--products] [--timing]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

from benchmarks.common import RESULTS, bench_model, embed_corpus, fashion_pixels, machine_info, write_report
from fashionrec_onnx import Embedder, read_model_info
from fashionrec_onnx.projection import append_projection
from fashionrec_onnx.quality.refine_learning import Projection, learn_projection, retrieval_scores

log = logging.getLogger("benchmarks")

K, MAP_K = 5, 10


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _pca(train: np.ndarray, dim: int) -> Projection:
    mean = train.mean(axis=0)
    _, _, axes = np.linalg.svd(train - mean, full_matrices=False)
    return Projection(mean.astype(np.float32), axes[:dim].T.astype(np.float32))


def categories(size: int, train_count: int, test_count: int, dim: int, photos: int, seed: int) -> dict:
    """Pixels, base, PCA and refined on held-out test images, by category."""
    from fashionrec_onnx.quality.datasets import load_split

    model = bench_model(size)
    train, train_labels = embed_corpus(model, "train", train_count)
    test, test_labels = embed_corpus(model, "test", test_count)
    test_images = load_split("test")[0][:test_count]
    started = time.perf_counter()
    projection, training = learn_projection(train, train_labels, dim=dim, seed=seed, k=K, map_k=MAP_K)
    learn_seconds = time.perf_counter() - started
    methods = {
        "pixels (28 px, L2)": _unit(test_images.reshape(len(test_images), -1)),
        "base model": test,
        f"PCA-{dim} (fitted on train)": _pca(train, dim).apply(test),
        f"refined-{dim} (learned on train categories)": projection.apply(test),
    }
    rows = {name: retrieval_scores(vectors, test_labels, K, MAP_K) for name, vectors in methods.items()}
    with tempfile.TemporaryDirectory() as tmp:
        refined = Path(tmp) / "refined.onnx"
        info = append_projection(model, projection.mean, projection.matrix, refined, {"benchmark": "refine"})
        with Embedder(refined) as embedder:
            by_photo = embedder.embed_pixels(fashion_pixels(test_images[:photos], info.input_size), 32)
    agreement = np.sum(by_photo * projection.apply(test[:photos]), axis=1)
    base, refined_row = rows["base model"], rows[f"refined-{dim} (learned on train categories)"]
    return {
        "model": f"{size} px, random:seed=0, fingerprint {read_model_info(model).fingerprint}",
        "train_images": train_count,
        "test_images": test_count,
        "dim": dim,
        "methods": rows,
        "gain_precision@5": refined_row[f"precision@{K}"] - base[f"precision@{K}"],
        "gain_mAP@10": refined_row[f"mAP@{MAP_K}"] - base[f"mAP@{MAP_K}"],
        "training": {
            "seconds": learn_seconds,
            "best_epoch": training.best_epoch,
            "held_out_items": training.held_out_items,
            "held_out_before": training.before,
            "held_out_after": training.after,
            "curve": [vars(epoch) for epoch in training.curve],
        },
        "refined_model_by_photo": {
            "photos": photos,
            "min_cosine_to_projected_stored_vector": float(agreement.min()),
        },
    }


def _views(image: np.ndarray, count: int, rng: np.random.Generator) -> list[Image.Image]:
    """Augmented views of one 28 px image: a random crop (80-100%), a flip, a light change."""
    base = Image.fromarray(image).convert("RGB").resize((56, 56), Image.Resampling.BICUBIC)
    views = []
    for _ in range(count):
        side = int(rng.integers(45, 57))
        left, top = (int(v) for v in rng.integers(0, 57 - side, 2))
        view = base.crop((left, top, left + side, top + side))
        if rng.random() < 0.5:
            view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        views.append(ImageEnhance.Brightness(view).enhance(float(rng.uniform(0.7, 1.3))))
    return views


def products(product_count: int, views: int, dim: int, seed: int) -> dict:
    """Products of several augmented views; whole products held out; recall@1 of a view."""
    from fashionrec_onnx.images import prepare_image
    from fashionrec_onnx.quality.datasets import load_split

    model = bench_model(64)
    images, labels = load_split("train")
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(images), product_count, replace=False)
    pictures = [view for i in chosen for view in _views(images[i], views, rng)]
    with Embedder(model) as embedder:
        vectors = embedder.embed_pixels(np.stack([prepare_image(p, 64, "squash") for p in pictures]), 64)
    product = np.repeat(np.arange(product_count), views)
    category = np.repeat(labels[chosen], views)
    held = product >= int(product_count * 0.8)  # the last 20% of products never seen in training
    projection, training = learn_projection(
        vectors[~held], category[~held], product[~held], dim=dim, seed=seed, k=1, map_k=views - 1
    )
    rows = {}
    for name, matrix in (("base model", vectors[held]), (f"refined-{dim}", projection.apply(vectors[held]))):
        scores = retrieval_scores(matrix, product[held], 1, views - 1)
        rows[name] = {"recall@1": scores["precision@1"], f"mAP@{views - 1}": scores[f"mAP@{views - 1}"]}
        rows[name]["category precision@5"] = retrieval_scores(matrix, category[held], K, MAP_K)[
            f"precision@{K}"
        ]
    return {
        "products": product_count,
        "views_per_product": views,
        "held_out_products": int(product_count - int(product_count * 0.8)),
        "methods": rows,
        "training_seconds": training.seconds,
        "best_epoch": training.best_epoch,
    }


def timing(dim: int, seed: int) -> dict:
    """Learning on all 60,000 train embeddings (2048-d, 64 px model), categories as labels."""
    vectors, labels = embed_corpus(bench_model(64), "train", 60_000)
    started = time.perf_counter()
    _, training = learn_projection(vectors, labels, dim=dim, seed=seed, k=K, map_k=MAP_K)
    return {
        "items": len(vectors),
        "stored_dim": int(vectors.shape[1]),
        "dim": dim,
        "seconds": time.perf_counter() - started,
        "epochs_run": len(training.curve) - 1,
        "best_epoch": training.best_epoch,
        "held_out_before": training.before,
        "held_out_after": training.after,
    }


def markdown(results: dict) -> str:
    lines = ["# Refinement learned from labels (`python -m benchmarks.refine`)", ""]
    cat = results["categories"]
    lines += [
        f"Fashion-MNIST, {cat['model']}. Learned on {cat['train_images']} train images' categories; "
        f'"more like this" among the first {cat["test_images"]} test images (each queries the others).',
        "",
        "| method | precision@5 | mAP@10 |",
        "| --- | --- | --- |",
    ]
    for name, row in cat["methods"].items():
        lines.append(f"| {name} | {row['precision@5']:.4f} | {row['mAP@10']:.4f} |")
    training = cat["training"]
    lines += [
        "",
        f"Refined over base: precision@5 {cat['gain_precision@5']:+.4f}, mAP@10 {cat['gain_mAP@10']:+.4f}. "
        f"Learning took {training['seconds']:.1f} s; best epoch {training['best_epoch']} of "
        f"{len(training['curve']) - 1} (early stop on {training['held_out_items']} held-out train images).",
        f"The refined ONNX model embedded {cat['refined_model_by_photo']['photos']} test photos itself: "
        f"min cosine to the projected stored vector "
        f"{cat['refined_model_by_photo']['min_cosine_to_projected_stored_vector']:.6f}.",
        "",
        "Training curve (held-out train images):",
        "",
        "| epoch | loss | precision@5 | mAP@10 |",
        "| --- | --- | --- | --- |",
    ]
    for epoch in training["curve"]:
        loss = "-" if epoch["epoch"] == 0 else f"{epoch['loss']:.4f}"
        lines.append(f"| {epoch['epoch']} | {loss} | {epoch['precision']:.4f} | {epoch['map']:.4f} |")
    if "products" in results:
        prod = results["products"]
        lines += [
            "",
            f"## Products ({prod['products']} products x {prod['views_per_product']} augmented views, 64 px; "
            f"{prod['held_out_products']} products held out)",
            "",
            "| method | recall@1 (same product) | mAP | category precision@5 |",
            "| --- | --- | --- | --- |",
        ]
        for name, row in prod["methods"].items():
            values = list(row.values())
            lines.append(f"| {name} | {values[0]:.4f} | {values[1]:.4f} | {values[2]:.4f} |")
    if "timing" in results:
        t = results["timing"]
        lines += [
            "",
            "## Training time",
            "",
            f"{t['items']:,} x {t['stored_dim']} stored vectors -> {t['dim']} dims: {t['seconds']:.1f} s "
            f"({t['epochs_run']} epochs, best {t['best_epoch']}; held-out precision@5 "
            f"{t['held_out_before']['precision@5']:.4f} -> {t['held_out_after']['precision@5']:.4f}).",
        ]
    machine = results["machine"]
    lines += ["", f"Machine: {machine['cpu']}, {machine['cores']} cores, load {machine['load_average']}, "
              f"{machine['date']}.", ""]  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.refine", description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224, help="model input size (px) for the category run")
    parser.add_argument("--train", type=int, default=6000)
    parser.add_argument("--test", type=int, default=2000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--photos", type=int, default=200, help="test photos the refined model embeds itself")
    parser.add_argument("--products", action="store_true", help="also the product-level run")
    parser.add_argument("--timing", action="store_true", help="also time learning on 60,000 x 2048")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "refine.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    results: dict = {"machine": machine_info()}
    results["categories"] = categories(args.size, args.train, args.test, args.dim, args.photos, args.seed)
    if args.products:
        results["products"] = products(1500, 4, args.dim, args.seed)
    if args.timing:
        results["timing"] = timing(args.dim, args.seed)
    write_report(args.out, results, markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
