"""Turn a results dict into Markdown tables and PNG plots (every figure from the same run)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _mb(value: float) -> str:
    return f"{value / 1e6:,.1f}"


def _row(*cells: object) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _table(header: list[str], rows: list[list[object]]) -> list[str]:
    return [_row(*header), _row(*["---"] * len(header)), *(_row(*r) for r in rows)]


def headline(results: dict[str, Any]) -> list[str]:
    """Baseline vs ours: embedding ms/image, search ms/query at the 44k size, recall@5."""
    methods = results["embedding"]["methods"]
    base = methods["keras_predict_batch1 (baseline)"]
    single = methods["onnxruntime_batch1_2threads"]
    batched = next(
        v for k, v in methods.items()
        if k.startswith("onnxruntime_batch") and k.endswith("2threads") and "batch1_" not in k
    )  # fmt: skip
    int8 = next((v for k, v in methods.items() if "int8_batch" in k and "batch1_" not in k), None)
    search = results["search"]
    size = next((s for s in search if s["n"] == 44_000), search[-1])
    hnsw, brute = size["methods"]["hnswlib (ours)"], size["methods"]["sklearn_brute (baseline)"]
    rows = [
        ["embed one query photo (batch 1), ms", f"{base['median_ms']:.1f}", f"{single['median_ms']:.1f}",
         f"{base['median_ms'] / single['median_ms']:.1f}x"],
        ["embed a catalog (batched), ms per image", f"{base['median_ms']:.1f}", f"{batched['median_ms']:.1f}",
         f"{base['median_ms'] / batched['median_ms']:.1f}x"],
    ]  # fmt: skip
    if int8:
        ratio = base["median_ms"] / int8["median_ms"]
        rows.append(["embed a catalog, int8, ms per image", f"{base['median_ms']:.1f}",
                     f"{int8['median_ms']:.1f}", f"{ratio:.1f}x"])  # fmt: skip
    rows += [
        [f"search, ms per query at {size['n']:,}", f"{brute['latency']['median_ms']:.2f}",
         f"{hnsw['latency']['median_ms']:.3f}",
         f"{brute['latency']['median_ms'] / hnsw['latency']['median_ms']:.0f}x"],
        [f"recall@5 at {size['n']:,}", "1.000 (exact)", f"{hnsw['recall@5']:.3f}", ""],
    ]  # fmt: skip
    header = ["", "baseline (Keras predict + sklearn brute)", "fashionrec-onnx", "ratio"]
    return _table(header, rows)


def filtered_section(filtered: dict[str, Any] | None) -> list[str]:
    if not filtered:
        return []
    return [
        f"### Filtered search through the library at N = {filtered['n']:,} ({filtered['queries']} queries)",
        "",
        '`Catalog.search(query, k=5, filter={"category": ...})`, metadata lookups and hits included, '
        "against the notebook way: mask the category's rows, then sklearn brute force on them. "
        "recall@5 is against the exact filtered answer.",
        "",
        *_table(
            ["filter", "matching", "ours p50 ms", "ours p95 ms", "baseline p50 ms", "speedup", "recall@5"],
            [
                [
                    name,
                    f"{v['matching']:,}",
                    f"{v['ours']['median_ms']:.3f}",
                    f"{v['ours']['p95_ms']:.3f}",
                    f"{v['baseline']['median_ms']:.2f}",
                    f"{v['speedup']:.0f}x",
                    f"{v['recall@5']:.3f}",
                ]
                for name, v in filtered["filters"].items()
            ],
        ),  # fmt: skip
        "",
    ]


def distributed_section(distributed: dict[str, Any] | None) -> list[str]:
    """Ray against one process (quick mode only), and import speed."""
    if not distributed:
        return []
    emb, imp = distributed["embedding"], distributed["import"]
    return [
        f"### On Ray: {emb['photos']} {emb['photo_size']} files, batch {emb['batch_size']}, fp32",
        "",
        '`embed_to_parquet` on a local Ray against `Embedder.embed` in one process; "once started" '
        "runs from the first batch's start to the last one's end, the rest of a job is its workers "
        f"starting (loading the model). `ray.init`: {emb['ray_init_seconds']:.1f} s, once.",
        "",
        *_table(
            ["method", "images/s once started", "vs one process", "images/s whole job", "workers start s"],
            [
                [
                    name,
                    f"{v['steady_per_second']:.1f}",
                    f"{v['steady_vs_one_process']:.2f}x",
                    f"{v['per_second']:.1f}",
                    f"{v['worker_start_seconds']:.1f}",
                ]
                for name, v in emb["methods"].items()
            ],
        ),  # fmt: skip
        "",
        f"Import of {imp['vectors']:,} vectors of {imp['dim']} dimensions from Parquet into a new catalog: "
        f"{imp['import_vectors_per_second']:,.0f} vectors/s (`Catalog.add_many` of the same vectors from "
        f"memory: {imp['add_many_from_memory_per_second']:,.0f}; reading the Parquet alone: "
        f"{imp['read_parquet_per_second']:,.0f}; importing it again, all unchanged: "
        f"{imp['reimport_unchanged_per_second']:,.0f}).",
        "",
    ]


def products_section(found: dict[str, Any] | None) -> list[str]:
    if not found:
        return []
    from benchmarks.products import table

    title = f"## Search grouped by product: {found['items']:,} photos, {found['products']:,} products"
    return [title, "", *table(found)]


def _share(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"  # blank where nothing was planted


def duplicates_section(found: dict[str, Any] | None) -> list[str]:
    if not found:
        return []
    kinds = list(found["kinds"])
    copies = ", ".join(f"{found['kinds'][kind]} {kind}" for kind in kinds)
    return [
        f"## Near-duplicates: {found['planted']:,} copies planted among {found['items']:,} items",
        "",
        f"`Catalog.duplicates` ({found['neighbours']} graph neighbours per item, then connected components "
        f"above the threshold); building the catalog's graph took {found['build_s']:.0f} s beforehand. "
        f"Copies: {copies}. Precision and recall of duplicate pairs (imagededup's measures) against the "
        f"planted pairs and the {found['identical_pairs_in_dataset']} pixel-identical pairs Fashion-MNIST "
        "already holds.",
        "",
        *_table(
            [
                "threshold",
                "groups",
                "pairs found",
                "precision",
                "recall",
                *(f"recall {k}" for k in kinds),
                "seconds",
            ],
            [
                [
                    f"{t['threshold']:.4f}{' (calibrated)' if t['calibrated'] else ''}",
                    f"{t['groups']:,}",
                    f"{t['pairs_found']:,}",
                    f"{t['precision']:.3f}",
                    f"{t['recall']:.3f}",
                    *(_share(t["recall_by_kind"][k]) for k in kinds),
                    f"{t['seconds']:.1f}",
                ]
                for t in found["thresholds"]
            ],
        ),  # fmt: skip
        "",
    ]


def markdown(results: dict[str, Any], plots: dict[str, str]) -> str:
    machine = results["machine"]
    lines = [
        f"# Benchmark report ({results['mode']} mode)",
        "",
        f"Command: `{results['command']}`. Weights: **{results['weights']}**. Measured {machine['date']} on "
        f"{machine['cpu']} ({machine['cores']} cores, AVX2 {machine['avx2']}, VNNI "
        f"{machine['avx512_vnni']}); onnxruntime {machine['onnxruntime']}, hnswlib {machine['hnswlib']}, "
        f"numpy {machine['numpy']}, scikit-learn {machine['scikit-learn']}, "
        f"tensorflow {machine['tensorflow']}. "
        "All figures come from one run; ratios are of medians.",
        "",
        "## Headline",
        "",
        *headline(results),
        "",
    ]
    emb = results["embedding"]
    ingest = results["ingest"]
    lines += [
        f"## Embedding ({emb['model']['input_size']} px, {emb['model']['weights']})",
        "",
        *_table(
            ["method", "median ms/image", "p95 ms/image", "images/s", "vs baseline"],
            [
                [
                    name,
                    f"{v['median_ms']:.2f}",
                    f"{v['p95_ms']:.2f}",
                    f"{v['per_second']:.1f}",
                    f"{v['speedup_vs_baseline']:.2f}x",
                ]
                for name, v in emb["methods"].items()
            ],
        ),  # fmt: skip
        "",
        f"![embedding]({plots['embedding']})",
        "",
        f"### End to end: {emb['ingest']['count']} {emb['ingest']['photos']} files on disk to vectors",
        "",
        *_table(
            ["method", "median ms/image", "images/s", "vs baseline"],
            [
                [name, f"{v['median_ms']:.2f}", f"{v['per_second']:.1f}", f"{v['speedup_vs_baseline']:.2f}x"]
                for name, v in emb["ingest"]["methods"].items()
            ],
        ),  # fmt: skip
        "",
        f"### Ingest: model-only vs end to end ({results['ingest']['photos']} photos, "
        f"{results['ingest']['photo_size']}, batch {results['ingest']['batch_size']}, fp32)",
        "",
        *_table(
            ["path", "median ms/image", "images/s"],
            [
                [
                    "model only (pixels already decoded)",
                    f"{ingest['model_only']['median_ms']:.2f}",
                    f"{ingest['model_only']['per_second']:.1f}",
                ],
                [
                    "end to end (JPEG files, decoding overlapped)",
                    f"{ingest['end_to_end']['median_ms']:.2f}",
                    f"{ingest['end_to_end']['per_second']:.1f}",
                ],
                ["ratio end-to-end / model-only", "", f"{ingest['ratio']:.2f}"],
            ],
        ),  # fmt: skip
        "",
        *distributed_section(results.get("distributed")),
        "## Search",
        "",
        f"Vectors: Fashion-MNIST embeddings from the {results['corpus_model']} model; queries are "
        "test-split images. Above the real corpus the catalog grows with structured synthetic "
        "vectors (real embeddings displaced within the corpus' principal subspace), never isotropic noise.",
        "",
    ]
    for size in results["search"]:
        rows = []
        for name, v in size["methods"].items():
            rows.append([
                name, f"{v['build_s']:.1f}", _mb(v["memory_bytes"]), f"{v['latency']['median_ms']:.3f}",
                f"{v['latency']['p95_ms']:.3f}", f"{v['batched_qps']:,.0f}", f"{v['recall@5']:.3f}",
                f"{v['recall@10']:.3f}", f"{v['speedup_vs_baseline']:.1f}x",
            ])  # fmt: skip
        lines += [
            f"### N = {size['n']:,} ({size['vectors']})",
            "",
            *_table(
                [
                    "method",
                    "build s",
                    "memory MB",
                    "p50 ms",
                    "p95 ms",
                    "batched q/s",
                    "recall@5",
                    "recall@10",
                    "p50 vs baseline",
                ],
                rows,
            ),  # fmt: skip
            "",
        ]
    largest = results["search"][-1]
    hnsw = largest["methods"]["hnswlib (ours)"]
    lines += [
        f"### ef sweep at N = {largest['n']:,} (M={hnsw['M']}, ef_construction={hnsw['ef_construction']})",
        "",
        *_table(
            ["ef", "queries/s (batch 1)", "recall@5", "recall@10"],
            [
                [s["ef"], f"{s['qps_batch1']:,.0f}", f"{s['recall@5']:.4f}", f"{s['recall@10']:.4f}"]
                for s in hnsw["ef_sweep"]
            ],
        ),  # fmt: skip
        "",
        f"![recall vs queries/s]({plots['recall']})",
        "",
        *filtered_section(results.get("filtered")),
    ]
    quality = results["quality"]
    categories = list(next(iter(quality["methods"].values()))["by_category"])
    lines += [
        "## Retrieval quality: Fashion-MNIST precision@k and mAP@k",
        "",
        f"Catalog: {quality['catalog']}; queries: {quality['queries']}; a hit counts when its category "
        "is the query's. Figures from the library's evaluation code (what `fashionrec evaluate` "
        "reports); the categories' columns are precision@5.",
        "",
        *_table(
            ["method", "weights", "P@1", "P@5", "mAP@5", "mAP@10", *categories],
            [
                [
                    name,
                    v["weights"],
                    *(f"{v[figure]:.3f}" for figure in ("precision@1", "precision@5", "mAP@5", "mAP@10")),
                    *(f"{v['by_category'][c]:.2f}" for c in categories),
                ]
                for name, v in quality["methods"].items()
            ],
        ),  # fmt: skip
        "",
        f"![precision by category]({plots['quality']})",
        "",
    ]
    lines += duplicates_section(results.get("duplicates"))
    lines += products_section(results.get("products"))
    int8 = results["int8"]
    lines += [
        "## int8 model",
        "",
        f"Static QDQ per-channel quantisation, calibrated on {int8['calibration']}. Speed: see the "
        "embedding tables above (same run).",
        "",
        *_table(
            ["figure", "value"],
            [
                ["median cosine int8 vs fp32 (same image)", f"{int8['cosine_median']:.4f}"],
                ["minimum cosine", f"{int8['cosine_min']:.4f}"],
                [
                    f"top-5 overlap, each model on its own catalog of {int8['catalog']:,} images",
                    f"{int8['top5_overlap']:.3f}",
                ],
            ],
        ),  # fmt: skip
        "",
    ]
    reduction = results["reduction"]
    rows = []
    for name, v in reduction["variants"].items():
        rows.append([
            name, f"{v['build_s']:.1f}", _mb(v["graph_bytes"]), _mb(v["vectors_bytes"]),
            f"{v['latency']['median_ms']:.3f}", f"{v['recall@5_vs_exact_full']:.3f}",
            f"{v.get('recall@5_graph_only_vs_exact_full', v['recall@5_vs_exact_full']):.3f}",
            f"{v['precision@5']:.3f}",
        ])  # fmt: skip
    f16 = results["float16"]
    lines += [
        f"## PCA reduction ({reduction['catalog']:,} items, {reduction['queries']:,} queries)",
        "",
        "recall@5 is against exact search over the full 2048-d vectors; the catalog re-ranks the "
        'graph\'s candidates with the full vectors ("graph only" is without that step).',
        "",
        *_table(
            [
                "graph",
                "build s",
                "graph MB",
                "vectors MB",
                "p50 ms",
                "recall@5",
                "recall@5 graph only",
                "precision@5",
            ],
            rows,
        ),  # fmt: skip
        "",
        "## float16 storage",
        "",
        *_table(
            ["figure", "value"],
            [
                ["exact recall@5 on float16 vectors vs float32", f"{f16['recall@5']:.4f}"],
                ["exact recall@10", f"{f16['recall@10']:.4f}"],
                [
                    "stored vectors MB, float32 -> float16",
                    f"{_mb(f16['bytes_float32'])} -> {_mb(f16['bytes_float16'])}",
                ],
            ],
        ),  # fmt: skip
        "",
    ]
    return "\n".join(lines)


def plot(results: dict[str, Any], out: Path, prefix: str) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = {"recall": f"{prefix}-recall-vs-qps.png", "embedding": f"{prefix}-embedding.png",
             "quality": f"{prefix}-precision.png"}  # fmt: skip

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for size in results["search"]:
        sweep = size["methods"]["hnswlib (ours)"]["ef_sweep"]
        axes.plot([s["qps_batch1"] for s in sweep], [s["recall@5"] for s in sweep], marker="o",
                  label=f"hnswlib, N={size['n']:,}")  # fmt: skip
        for s in sweep:
            axes.annotate(f"ef={s['ef']}", (s["qps_batch1"], s["recall@5"]), fontsize=7)
        brute = size["methods"]["sklearn_brute (baseline)"]
        axes.scatter(
            [1000 / brute["latency"]["median_ms"]], [1.0], marker="x", label=f"sklearn brute, N={size['n']:,}"
        )
    axes.set_xscale("log")
    axes.set_xlabel("queries per second (batch 1, log scale)")
    axes.set_ylabel("recall@5 vs exact")
    axes.set_title("HNSW recall against speed")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(out / names["recall"], dpi=110)
    plt.close(figure)

    methods = results["embedding"]["methods"]
    figure, axes = plt.subplots(figsize=(7, 4))
    labels = list(methods)
    axes.barh(labels, [methods[m]["median_ms"] for m in labels], color="#4a7fb0")
    axes.set_xlabel("median ms per image (lower is better)")
    axes.invert_yaxis()
    axes.set_title(f"Embedding speed ({results['embedding']['model']['weights']})")
    figure.tight_layout()
    figure.savefig(out / names["embedding"], dpi=110)
    plt.close(figure)

    quality = results["quality"]["methods"]
    figure, axes = plt.subplots(figsize=(8, 4))
    categories = list(next(iter(quality.values()))["by_category"])
    width = 0.8 / len(quality)
    for number, (name, value) in enumerate(quality.items()):
        heights = [value["by_category"][c] for c in categories]
        label = f"{name} [{value['weights']}]"
        axes.bar([i + number * width for i in range(len(categories))], heights, width, label=label)
    axes.set_xticks(
        [i + 0.4 - width / 2 for i in range(len(categories))], categories, rotation=30, fontsize=8
    )
    axes.set_ylabel("precision@5")
    axes.legend(fontsize=7)
    axes.set_title("Fashion-MNIST precision@5 by category")
    figure.tight_layout()
    figure.savefig(out / names["quality"], dpi=110)
    plt.close(figure)
    return names
