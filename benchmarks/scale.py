"""A catalog at scale: build, open, memory, search, filters, exact search and recall against N.

    python -m benchmarks.scale --items 44000 200000 1000000 [--graph reduced|full] [--dtype float16]
    python -m benchmarks.scale --items 200000 --dtype float32 --previous /tmp/main-src

``--previous DIR`` (a source tree of the previous version, e.g. ``git archive main``) builds and
measures the same corpus with that version's `fashionrec_onnx` too, in the same run, and the
tables put the two designs side by side with their ratios.

Each size is built through the public API (`Catalog.create`, `add_many` in batches of 20,000 with
``category``, ``product`` and selectivity fields), then measured in a fresh process so that memory
figures belong to that catalog alone. Vectors: the Fashion-MNIST corpus embedded by the model
(real image embeddings) grown with structured vectors near them (`benchmarks.search`), never
isotropic noise. Memory is VmRSS (resident set, file-backed pages included) from
/proc/self/status; "peak" is VmHWM after resetting it, so it covers only the step measured.
Writes ``results/scale.json`` and ``results/scale.md``, and a plot of each cost against N.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import RAW, RESULTS, bench_model, embed_corpus, machine_info, summary_ms, timed
from benchmarks.search import structured_blocks

log = logging.getLogger("benchmarks.scale")

BATCH = 20_000
QUERIES = 1_000
REAL = 44_000  # real embeddings the corpus grows from (fewer when fewer are cached: --real)
EXACT_QUERIES = 20
FILTER_QUERIES = 100
SELECTIVITY = {"1%": ("one", 100), "10%": ("ten", 10), "50%": ("half", 2)}


def status(field: str) -> int:
    """A /proc/self/status figure in bytes (VmRSS, VmHWM, RssAnon, RssFile)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS


def metadata(start: int, count: int, labels: np.ndarray) -> list[dict[str, str]]:
    return [
        {
            "category": f"c{int(labels[i % len(labels)])}",
            "product": f"p{i // 3}",
            **{field: str(i % every == 0) for field, every in SELECTIVITY.values()},
        }
        for i in range(start, start + count)
    ]


def _embedded(split: str, count: int, fingerprint: str = "*") -> tuple[np.ndarray, np.ndarray, str]:
    """Cached embeddings when there are (no model, no TensorFlow in a measured process): the
    smallest cache of the split holding ``count`` rows (of the model ``fingerprint``), cut to
    ``count``; embedded with the model when none holds enough (a smaller cache once stood in
    silently for a larger corpus). Also returns the model's fingerprint."""
    from fashionrec_onnx.quality.datasets import load_split

    def rows(path: Path) -> int:
        return int(path.name.split("-")[2])

    enough = sorted(
        (path for path in RAW.glob(f"fmnist-{split}-*-{fingerprint}.npy") if rows(path) >= count), key=rows
    )
    if enough:
        vectors = np.load(enough[0], allow_pickle=False)[:count]
        return vectors, load_split(split)[1][: len(vectors)], enough[0].stem.split("-")[3]
    from fashionrec_onnx import read_model_info

    model = bench_model(64)
    return (*embed_corpus(model, split, count), read_model_info(model).fingerprint)


def corpus(items: int, real_count: int = REAL) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Catalog vectors, their labels, and query vectors (Fashion-MNIST test images): the real
    embeddings first, then structured vectors near them up to ``items``."""
    real, labels, fingerprint = _embedded("train", real_count)
    queries, _, _ = _embedded("test", QUERIES, fingerprint)  # the same model's
    cache = RAW / f"scale-{items}-{len(real)}.npy"
    if items <= len(real):
        return real[:items], labels, queries
    if not cache.exists():
        partial = cache.with_suffix(".partial.npy")
        matrix = np.lib.format.open_memmap(partial, "w+", np.float32, (items, real.shape[1]))
        matrix[: len(real)] = real
        start = len(real)
        for block in structured_blocks(real, items - len(real), seed=1):
            matrix[start : start + len(block)] = block
            start += len(block)
        matrix.flush()
        del matrix
        partial.replace(cache)
    return np.load(cache, mmap_mode="r"), labels, queries


def catalog_model() -> Path:
    """The model the scale catalogs are created with (only its dimension and fingerprint count:
    the vectors are given); a cached export, so that no measured process loads TensorFlow."""
    return (sorted((RAW / "models").glob("resnet50-64-seed0-*.onnx")) or [bench_model(64)])[0]


def build(root: Path, items: int, graph: str, dtype: str, real_count: int) -> dict[str, object]:
    from fashionrec_onnx import Catalog

    vectors, labels, _ = corpus(items, real_count)
    shutil.rmtree(root, ignore_errors=True)
    reduce = 256 if graph == "reduced" else None
    model = catalog_model()
    reset_peak()
    started = time.perf_counter()
    with Catalog.create(root, model, vector_dtype=dtype, reduce_to=reduce) as catalog:
        for start in range(0, items, BATCH):
            count = min(BATCH, items - start)
            keys = [f"item-{i:07d}" for i in range(start, start + count)]
            catalog.add_many(
                keys, np.asarray(vectors[start : start + count]), metadata=metadata(start, count, labels)
            )
            log.info("%d / %d items (%.0f s)", start + count, items, time.perf_counter() - started)
    seconds = time.perf_counter() - started
    files = [p for p in root.iterdir() if p.is_file()]
    return {
        "build_s": seconds,
        "import_vectors_per_s": items / seconds,
        "rss_peak_build_mb": status("VmHWM") / 1e6,
        "disk_mb": sum(p.stat().st_size for p in files) / 1e6,
        "tier_mb": sum(p.stat().st_size for p in files if p.name.startswith("tier-")) / 1e6,
        "real_embeddings": min(items, len(corpus(items, real_count)[1])),
    }


def evict(root: Path) -> None:
    """Hand the catalog's vector files' pages back to the kernel (they are written and synced):
    searches start as on a machine whose page cache does not hold them, whatever ran before."""
    for path in root.glob("vectors-*"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def measure(root: Path, items: int, real_count: int, cold: bool = False) -> dict[str, object]:
    """In a fresh process: open, search, filters, exact search, check, and the memory of each.
    ``cold``: the vector file is evicted from the page cache first, and again before the filters."""
    from fashionrec_onnx import Catalog
    from fashionrec_onnx.catalog import oracle
    from fashionrec_onnx.quality.evaluation import recall_at_k

    _, _, queries = corpus(items, real_count)
    queries = np.resize(queries, (QUERIES, queries.shape[1]))  # fewer cached: each asked again
    if cold:
        evict(root)
    figures: dict[str, object] = {"rss_start_mb": status("VmRSS") / 1e6, "vectors_evicted": cold}
    reset_peak()
    opened = time.perf_counter()
    catalog = Catalog.open(root, readonly=True)
    figures["open_s"] = time.perf_counter() - opened
    figures["rss_after_open_mb"] = status("VmRSS") / 1e6
    latency = [timed(lambda q=q: catalog.search(q, k=5)) for q in queries]
    figures["search"] = summary_ms(latency)
    figures["rss_after_1000_searches_mb"] = status("VmRSS") / 1e6
    figures["rss_file_after_searches_mb"] = status("RssFile") / 1e6

    core = catalog._core
    truth_queries = queries[:200]
    before = status("VmRSS")
    reset_peak()
    exact, _ = oracle.exact_topk(core.vectors, core.rows, core.live_mask(), truth_queries, 5)
    found = np.stack(
        [[core.store.item_by_key(h.key).label for h in catalog.search(q, k=5)] for q in truth_queries]
    )
    figures["recall@5_vs_exact_full"] = recall_at_k(found, exact, 5)
    exact_times = [timed(lambda q=q: catalog.exact_search(q, k=5)) for q in queries[:EXACT_QUERIES]]
    figures["exact_search"] = summary_ms(exact_times)
    same = 0
    for query, truth in zip(queries[:EXACT_QUERIES], exact[:EXACT_QUERIES]):
        hits = catalog.exact_search(query, k=5)
        labels = [core.store.item_by_key(h.key).label for h in hits]
        brute = oracle.squared_distances(query[None, :], core.vectors.read(truth))[0]
        mine = oracle.squared_distances(query[None, :], core.vectors.read(labels))[0]
        same += int(np.allclose(np.sort(mine), np.sort(brute), atol=1e-5))  # same items, ties aside
    figures["exact_equals_brute_force"] = same / EXACT_QUERIES
    started = time.perf_counter()
    report = catalog.check(k=5, sample=1000)
    figures["check_s"] = time.perf_counter() - started
    figures["check_recall@5"] = report.recall
    figures["rss_peak_exact_and_check_mb"] = status("VmHWM") / 1e6
    figures["rss_peak_above_before_mb"] = (status("VmHWM") - before) / 1e6

    if cold:  # the exact searches and check above read the whole file
        evict(root)
    for name, (field, _) in SELECTIVITY.items():
        wanted = {field: "True"}
        times, hit, total = [], 0, 0
        for query in queries[:FILTER_QUERIES]:
            times.append(timed(lambda q=query, w=wanted: catalog.search(q, k=5, filter=w)))
        for query in queries[:20]:
            got = {h.key for h in catalog.search(query, k=5, filter=wanted)}
            want = {h.key for h in catalog.exact_search(query, k=5, filter=wanted)}
            hit, total = hit + len(got & want), total + len(want)
        figures[f"filtered_{name}"] = {**summary_ms(times), "recall@5_vs_exact_filtered": hit / max(1, total)}
    figures["graph_dim"] = catalog.graph_dim
    figures["vector_dtype"] = core.vectors.dtype.name
    catalog.close()
    return figures


def run_size(
    items: int,
    graph: str,
    dtype: str,
    work: Path,
    reuse: bool = False,
    real_count: int = REAL,
    previous: Path | None = None,
    cold: bool = False,
) -> dict[str, object]:
    """Build and measure one catalog, each step in a fresh process. With ``previous`` the steps
    run in that source tree (its `fashionrec_onnx`, this benchmark copied beside it)."""
    design = "previous" if previous is not None else "current"
    figures: dict[str, object] = {"items": items, "graph": graph, "dtype": dtype, "design": design}
    record = work / f"scale-{items}-{graph}-{dtype}-{design}.build.json"
    steps = ("build", "measure")
    if reuse and record.exists():
        figures.update(json.loads(record.read_text()))
        steps = ("measure",)
    where = Path.cwd()
    if previous is not None:
        shutil.copytree(Path(__file__).parent, previous / "benchmarks", dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("results"))  # fmt: skip
        (previous / "benchmarks" / "results").mkdir(exist_ok=True)
        raw = previous / "benchmarks" / "results" / "raw"
        if not raw.exists():
            raw.symlink_to(RAW.resolve())
        where = previous
    for step in steps:  # each in a fresh process: its memory is its own
        command = [sys.executable, "-m", "benchmarks.scale", "--step", step, "--items", str(items),
                   "--graph", graph, "--dtype", dtype, "--work", str(work.resolve()),
                   "--real", str(real_count), "--design", design] + (["--cold"] if cold else [])  # fmt: skip
        load = os.getloadavg()[0]
        output = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True, cwd=where).stdout
        figures.update(json.loads(output.strip().splitlines()[-1]))
        figures[f"load_1min_{step}"] = [load, os.getloadavg()[0]]  # at the step's start and end
        if step == "build":
            record.write_text(json.dumps(figures))
        log.info("%s %s %d: %s", design, step, items, figures)
    return figures


def markdown(runs: list[dict[str, object]], machine: dict[str, object]) -> str:
    def mb(value: object) -> str:
        return f"{float(value):,.0f}"  # type: ignore[arg-type]

    lines = [
        "# Catalog at scale",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, shared and noisy; {machine['date']}.",
        "Memory is VmRSS (file-backed pages included); peak is VmHWM of the step.",
        "",
        "| items | graph | build s | vectors/s | open s | RSS open MB | RSS 1k searches MB | "
        "peak exact+check MB (above before) | disk MB | search p50/p95 ms | recall@5 | "
        "filtered p50 1% / 10% / 50% ms | "
        "filtered recall@5 | exact ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        s, f = r["search"], [r[f"filtered_{n}"] for n in SELECTIVITY]
        lines.append(
            f"| {r['items']:,} | {r['graph']} {r['graph_dim']}-d, {r['dtype']} | {r['build_s']:.0f} | "
            f"{r['import_vectors_per_s']:,.0f} | {r['open_s']:.2f} | {mb(r['rss_after_open_mb'])} | "
            f"{mb(r['rss_after_1000_searches_mb'])} | {mb(r['rss_peak_exact_and_check_mb'])} "
            f"(+{mb(r['rss_peak_above_before_mb'])}) | {mb(r['disk_mb'])} | "
            f"{s['median_ms']:.2f} / {s['p95_ms']:.2f} | {r['recall@5_vs_exact_full']:.3f} | "
            + " / ".join(f"{x['median_ms']:.1f}" for x in f)
            + " | "
            + " / ".join(f"{x['recall@5_vs_exact_filtered']:.3f}" for x in f)
            + f" | {r['exact_search']['median_ms']:.0f} |"
        )  # type: ignore[index]
    return "\n".join(lines) + "\n"


def plot(runs: list[dict[str, object]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    costs = {
        "build s": lambda r: r["build_s"],
        "open s": lambda r: r["open_s"],
        "RSS after 1k searches (GB)": lambda r: r["rss_after_1000_searches_mb"] / 1000,
        "disk (GB)": lambda r: r["disk_mb"] / 1000,
        "search p50 ms": lambda r: r["search"]["median_ms"],
        "exact search ms": lambda r: r["exact_search"]["median_ms"],
    }
    figure, axes = plt.subplots(2, 3, figsize=(13, 7))
    for axis, (name, value) in zip(axes.flat, costs.items()):
        for graph in sorted({str(r["graph"]) for r in runs}):
            chosen = sorted((r for r in runs if r["graph"] == graph), key=lambda r: r["items"])
            axis.plot([r["items"] for r in chosen], [value(r) for r in chosen], marker="o", label=graph)
        axis.set_title(name)
        axis.set_xscale("log")
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(out, dpi=90)


def compare(runs: list[dict[str, object]], machine: dict[str, object]) -> str:
    """The previous design and this one side by side, with the ratio previous / current."""
    rows: list[tuple[str, Callable[[dict[str, Any]], float], str]] = [
        ("build (add_many + PCA) s", lambda r: r["build_s"], "{:.0f}"),
        ("peak RSS during the build MB", lambda r: r.get("rss_peak_build_mb", float("nan")), "{:,.0f}"),
        ("disk MB (tier MB)", lambda r: r["disk_mb"], "{:,.0f}"),
        ("open s", lambda r: r["open_s"], "{:.2f}"),
        ("RSS after 1k searches MB", lambda r: r["rss_after_1000_searches_mb"], "{:,.0f}"),
        ("search p50 ms", lambda r: r["search"]["median_ms"], "{:.2f}"),
        ("search recall@5", lambda r: r["recall@5_vs_exact_full"], "{:.3f}"),
        *[
            (f"filtered {name} p50 ms", lambda r, n=name: r[f"filtered_{n}"]["median_ms"], "{:.1f}")
            for name in SELECTIVITY
        ],
        *[
            (
                f"filtered {name} recall@5",
                lambda r, n=name: r[f"filtered_{n}"]["recall@5_vs_exact_filtered"],
                "{:.3f}",
            )  # fmt: skip
            for name in SELECTIVITY
        ],
        ("exact_search p50 ms", lambda r: r["exact_search"]["median_ms"], "{:.0f}"),
        (
            "exact_search equal to brute force",
            lambda r: r.get("exact_equals_brute_force", float("nan")),
            "{:.2f}",
        ),
        ("check(k=5, sample=1000) s", lambda r: r.get("check_s", float("nan")), "{:.1f}"),
        ("peak RSS exact + check above before MB", lambda r: r["rss_peak_above_before_mb"], "{:,.0f}"),
    ]
    lines = [
        "# Catalog at scale: the compact tier against the previous design",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, shared and noisy; {machine['date']}.",
        "Memory is VmRSS (file-backed pages included); peaks are VmHWM of the step. Load: the 1-minute",
        "load average at the start and end of each step (2 cores).",
        "",
    ]
    for items in sorted({int(r["items"]) for r in runs}):  # type: ignore[call-overload]
        by = {r["design"]: r for r in runs if r["items"] == items and "design" in r}
        if set(by) != {"previous", "current"}:
            continue
        old, new = by["previous"], by["current"]
        lines += [
            f"## {items:,} items ({new['graph']} graph, {new['dtype']} vectors, "
            f"{new.get('real_embeddings', '?')} real embeddings grown with structured vectors)",
            "",
            "| figure | previous | compact tier | previous / tier |",
            "|---|---|---|---|",
        ]
        for name, value, shape in rows:
            a, b = float(value(old)), float(value(new))
            ratio = f"{a / b:.2f}" if b and np.isfinite(a) and np.isfinite(b) and "recall" not in name else ""
            extra = f" ({new['tier_mb']:,.0f})" if name.startswith("disk") and "tier_mb" in new else ""
            lines.append(f"| {name} | {shape.format(a)} | {shape.format(b)}{extra} | {ratio} |")
        loads = ", ".join(
            f"{design} {step} {r[f'load_1min_{step}'][0]:.1f}-{r[f'load_1min_{step}'][1]:.1f}"
            for design, r in (("previous", old), ("tier", new))
            for step in ("build", "measure")
            if f"load_1min_{step}" in r
        )
        lines += ["", f"Load (1-min average, start-end of step): {loads}.", ""]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, nargs="+", default=[44_000, 200_000])
    parser.add_argument("--graph", choices=("reduced", "full"), nargs="+", default=["reduced"])
    parser.add_argument("--dtype", choices=("float32", "float16"), default="float16")
    parser.add_argument("--work", type=Path, default=RAW / "scale")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--real", type=int, default=REAL, help="real embeddings the corpus grows from")
    parser.add_argument("--previous", type=Path, help="source tree of the previous version, measured beside")
    parser.add_argument("--reuse", action="store_true", help="measure catalogs built by an earlier run again")
    parser.add_argument(
        "--cold", action="store_true", help="evict the vector file from the page cache before measuring"
    )
    parser.add_argument("--step", choices=("build", "measure"), help=argparse.SUPPRESS)
    parser.add_argument("--design", default="current", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    if args.step:
        graph = args.graph[0]
        root = args.work / f"scale-{args.items[0]}-{graph}-{args.dtype}-{args.design}"
        args.work.mkdir(parents=True, exist_ok=True)
        figures = (
            build(root, args.items[0], graph, args.dtype, args.real)
            if args.step == "build"
            else measure(root, args.items[0], args.real, args.cold)
        )
        print(json.dumps(figures))
        return 0
    out = args.out or RESULTS / ("scale-tier" if args.previous else "scale")
    machine = machine_info()
    previous = (
        json.loads(out.with_suffix(".json").read_text())["runs"] if out.with_suffix(".json").exists() else []
    )
    runs = [r for r in previous if not (r["items"] in args.items and r["graph"] in args.graph)]
    designs = [args.previous.resolve(), None] if args.previous else [None]
    for items in args.items:
        for graph in args.graph:
            for source in designs:
                runs.append(
                    run_size(items, graph, args.dtype, args.work, args.reuse, args.real, source, args.cold)
                )
                runs.sort(key=lambda r: (r["graph"], r["items"], r.get("design", "")))
                out.parent.mkdir(parents=True, exist_ok=True)
                command = "python -m benchmarks.scale " + " ".join(sys.argv[1:])
                out.with_suffix(".json").write_text(
                    json.dumps({"machine": machine, "command": command, "runs": runs}, indent=1)
                )
                if args.previous:
                    out.with_suffix(".md").write_text(compare(runs, machine))
                else:
                    out.with_suffix(".md").write_text(markdown(runs, machine))
                    plot(runs, out.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
