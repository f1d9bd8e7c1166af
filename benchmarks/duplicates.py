"""Near-duplicates planted in a Fashion-MNIST catalog: are they found, and how fast?

Some train images get one copy each, cycling through five kinds of re-upload: resized (2x,
bicubic), downscaled (half size, 14 px, bicubic), JPEG-recompressed (quality 70), re-saved as PNG
(same pixels), and cropped (the image at 4x, 112 px, with 1-3 pixels, 0.9-2.7%, cut off each side
independently: a 28 px image has no 1-3% crop). Copies and the corpus are written as PNG files
and go into one catalog with their paths (so the default rule compares thumbnails, see
`fashionrec_onnx.catalog.thumbnails`); `Catalog.duplicates` then groups it, by default and at
fixed embedding thresholds (the rule without pixels). Measured like
imagededup evaluates its methods: precision and recall of duplicate pairs (every pair inside a found
group counts as found), against the planted pairs plus the pixel-identical images Fashion-MNIST
already holds; and by kind: the recall of that kind's planted pairs, and the precision of the found
pairs that hold a copy of that kind (blank where nothing was planted or found). Run alone:
``python -m benchmarks.duplicates --items 44000`` (writes duplicates.json and duplicates.md).
"""

from __future__ import annotations

import argparse
import io
import logging
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.common import RESULTS, bench_model, embed_corpus, machine_info, timed, write_report
from fashionrec_onnx import Catalog, Embedder, read_model_info
from fashionrec_onnx.images import prepare_image
from fashionrec_onnx.quality.evaluation import group_precision_recall, pairs_of_groups

log = logging.getLogger("benchmarks")

KINDS = ("resized", "downscaled", "jpeg", "png", "cropped")
PLANTED_SHARE = 0.02  # of the corpus that gets a copy
THRESHOLDS = (0.9995, 0.999, 0.998)  # fixed thresholds beside the calibrated one


def copy_of(image: np.ndarray, kind: str, seed: int = 0) -> Image.Image:
    """One near-duplicate of a 28 px grey Fashion-MNIST image, as a shop's re-upload would be."""
    original = Image.fromarray(image).convert("RGB")
    if kind == "resized":
        return original.resize((56, 56), Image.Resampling.BICUBIC)
    if kind == "downscaled":
        return original.resize((14, 14), Image.Resampling.BICUBIC)
    if kind == "cropped":
        left, top, right, bottom = (int(v) for v in np.random.default_rng(seed).integers(1, 4, 4))
        return original.resize((112, 112), Image.Resampling.BICUBIC).crop(
            (left, top, 112 - right, 112 - bottom)
        )
    buffer = io.BytesIO()
    original.save(buffer, "JPEG" if kind == "jpeg" else "PNG", quality=70)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def plant(images: np.ndarray, seed: int = 0) -> tuple[np.ndarray, list[Image.Image], list[str]]:
    """Which images get a copy, the copies, and their kinds (cycling, so each kind is a quarter)."""
    count = max(len(KINDS), round(len(images) * PLANTED_SHARE))
    chosen = np.sort(np.random.default_rng(seed).choice(len(images), count, replace=False))
    kinds = [KINDS[i % len(KINDS)] for i in range(count)]
    copies = [copy_of(images[i], kind, seed + n) for n, (i, kind) in enumerate(zip(chosen, kinds))]
    return chosen, copies, kinds


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


def _share(part: int, whole: int) -> float | None:
    return part / whole if whole else None  # blank, not 1.0, where there is nothing to count


def measure(
    report, expected: set[tuple[str, str]], planted: dict[str, set[tuple[str, str]]], kind_of: dict[str, str]
) -> dict:
    """imagededup's measures for one report, and recall and precision by kind of copy."""
    groups = [group.keys for group in report]
    precision, recall = group_precision_recall(groups, expected)
    found = pairs_of_groups(groups)
    by_kind: dict[str, dict[str, object]] = {}
    for kind, pairs in planted.items():
        touching = {pair for pair in found if kind_of.get(pair[0]) == kind or kind_of.get(pair[1]) == kind}
        by_kind[kind] = {
            "planted": len(pairs),
            "found": len(touching),
            "recall": _share(len(pairs & found), len(pairs)),
            "precision": _share(len(touching & expected), len(touching)),
        }
    between_originals = {pair for pair in found if pair[0] not in kind_of and pair[1] not in kind_of}
    return {
        "threshold": report.threshold,
        "calibrated": report.calibrated,
        "groups": len(report),
        "pairs_found": len(found),
        "precision": precision,
        "recall": recall,
        "recall_by_kind": {kind: row["recall"] for kind, row in by_kind.items()},
        "by_kind": by_kind,
        "pairs_between_originals": len(between_originals),
        "true_pairs_between_originals": len(between_originals & expected),
        "seconds": report.seconds,
    }


def confirmation_seconds(catalog: Catalog, repeats: int) -> dict[str, object]:
    """The confirmation step alone (the candidate pairs' pixel check, thumbnails stored), per
    pair (`thumbnails.same_photo` in a loop, the rule before) and batched (`duplicates.confirmed`),
    side by side in one process, each ``repeats`` times: the median seconds, and whether both
    gave the same pairs."""
    from fashionrec_onnx.catalog import duplicates, thumbnails
    from fashionrec_onnx.catalog.local_duplicates import LocalSource

    core = catalog._core
    found = duplicates.neighbour_pairs(LocalSource(core), duplicates.NEIGHBOURS)
    items = core.store.items_by_label(core.liveness.labels().tolist())
    with thumbnails.Thumbnails(core.root, readonly=True).signals(list(items.values())) as signals:
        has = np.zeros(core.rows, bool)
        has[signals.labels] = True
        both = has[found.first] & has[found.second]
        pairs = duplicates.compared_pairs(
            found.size, found.first[both], found.second[both], signals, duplicates.NEIGHBOURS
        )

        def per_pair() -> np.ndarray:
            keep = []
            for start in range(0, len(pairs), 1024):
                block = pairs[start : start + 1024]
                held = signals.pixels(np.unique(block).tolist())
                keep += [thumbnails.same_photo(held[int(p)], held[int(q)]) for p, q in block.tolist()]
            return np.asarray(keep, bool)

        seconds: dict[str, list[float]] = {"per_pair": [], "batched": []}
        answers: dict[str, np.ndarray] = {}
        for _ in range(repeats):
            for name, step in (
                ("per_pair", per_pair),
                ("batched", lambda: duplicates.confirmed(pairs, signals)),
            ):
                started = time.perf_counter()
                answers[name] = step()
                seconds[name].append(time.perf_counter() - started)
    median = {name: float(np.median(values)) for name, values in seconds.items()}
    return {
        "pairs": len(pairs),
        "one_photo": int(answers["batched"].sum()),
        "same_answers": bool((answers["per_pair"] == answers["batched"]).all()),
        "repeats": repeats,
        "seconds": seconds,
        "median_s": median,
        "speedup": median["per_pair"] / median["batched"],
    }


def run(model: Path, corpus: np.ndarray, images: np.ndarray, confirmation: int = 0) -> dict[str, object]:
    """``corpus``: the embeddings of ``images`` (Fashion-MNIST train, in order)."""
    chosen, copies, kinds = plant(images)
    identical = identical_groups(images)
    expected = truth(chosen, identical)
    planted = by_kind(chosen, kinds)
    kind_of = {f"copy-{copy}": kind for copy, kind in enumerate(kinds)}
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
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_images(Path(tmp) / "images", images, copies)
        with Catalog.create(Path(tmp) / "catalog", model) as catalog:
            results["build_s"] = timed(lambda: catalog.add_many(keys, vectors, paths=paths))
            for run_number, threshold in enumerate((None, None, *THRESHOLDS)):
                report = catalog.duplicates(threshold)  # the second default run reads stored thumbnails
                results["neighbours"] = report.neighbours
                measured = measure(report, expected, planted, kind_of)
                thresholds.append(measured | {"by_pixels": report.by_pixels, "stored": run_number == 1})
                log.info("duplicates at %.4f: %s", report.threshold, thresholds[-1])
            if confirmation:
                results["confirmation"] = confirmation_seconds(catalog, confirmation)
                log.info("confirmation step: %s", results["confirmation"])
    return results


def write_images(folder: Path, images: np.ndarray, copies: list[Image.Image]) -> list[str]:
    """The corpus and the copies as PNG files (lossless: the copies' pixels as made)."""
    folder.mkdir(parents=True)
    paths = []
    for row, image in enumerate(images):
        paths.append(str(folder / f"{row}.png"))
        Image.fromarray(image).save(paths[-1])
    for number, copy in enumerate(copies):
        paths.append(str(folder / f"copy-{number}.png"))
        copy.save(paths[-1])
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.duplicates", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--items", type=int, default=44_000, help="Fashion-MNIST train images in the catalog")
    parser.add_argument("--size", type=int, default=64, help="model input size (px)")
    parser.add_argument("--out", type=Path, default=RESULTS / "duplicates.json")
    parser.add_argument(
        "--confirmation",
        type=int,
        default=0,
        metavar="N",
        help="also time the confirmation step alone, per pair and batched, N times each (median)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from fashionrec_onnx.quality.datasets import load_split

    model = bench_model(args.size)
    started = time.perf_counter()
    corpus, _ = embed_corpus(model, "train", args.items)
    images = load_split("train")[0][: args.items]
    results = {"model": f"{args.size} px, random:seed=0", **run(model, corpus, images, args.confirmation)}
    results["seconds"] = time.perf_counter() - started
    results["machine"] = machine_info()
    write_report(args.out, results, markdown(results))
    return 0


def cell(value: float | None) -> str:
    """A share for a table: blank where there was nothing to count."""
    return "" if value is None else f"{value:.3f}"


def by_kind_table(results: dict) -> list[str]:
    """Recall and precision of each kind of copy, one row per threshold."""
    kinds = list(results["kinds"])
    lines = [
        "| rule | pairs found | precision | recall | "
        + " | ".join(f"{k} R / P" for k in kinds) + " | pairs between originals | seconds |",
        "| --- " * (len(kinds) + 6) + "|",
    ]  # fmt: skip
    for t in results["thresholds"]:
        rows = t.get("by_kind", {})
        per_kind = [
            f"{cell(rows[k]['recall'])} / {cell(rows[k]['precision'])}" if k in rows else "" for k in kinds
        ]
        lines.append(
            f"| {_rule(t)} | {t['pairs_found']:,} | "
            f"{t['precision']:.3f} | {t['recall']:.3f} | " + " | ".join(per_kind)
            + f" | {t.get('pairs_between_originals', '')} | {t['seconds']:.1f} |"
        )  # fmt: skip
    return lines


def _rule(t: dict) -> str:
    if not t["calibrated"]:
        return f"embeddings >= {t['threshold']:.4f}"
    if t.get("by_pixels"):
        read = "stored, second run" if t.get("stored") else "images read"
        return f"default: thumbnails ({t['by_pixels']:,} items, {read})"
    return f"default: embeddings >= {t['threshold']:.4f} (calibrated)"


def confirmation_lines(results: dict) -> list[str]:
    """The confirmation step's timing, when measured (``--confirmation N``)."""
    c = results.get("confirmation")
    if not c:
        return []
    same = "the same pairs" if c["same_answers"] else "DIFFERENT pairs"
    return [
        f"Confirmation step alone ({c['pairs']:,} candidate pairs compared by pixels, thumbnails "
        f"stored; median of {c['repeats']}, side by side): per pair {c['median_s']['per_pair']:.1f} s, "
        f"batched {c['median_s']['batched']:.1f} s ({c['speedup']:.1f}x), {same} "
        f"({c['one_photo']:,} one photo).",
        "",
    ]


def markdown(results: dict) -> str:
    machine = results["machine"]
    copies = ", ".join(f"{n} {kind}" for kind, n in results["kinds"].items())
    corpus = results["items"] - results["planted"]
    return "\n".join(
        [
            f"# Near-duplicates (`python -m benchmarks.duplicates --items {corpus}`)",
            "",
            f"{results['items']:,} items ({results['planted']} planted copies: {copies}), "
            f"model {results['model']}; graph built in {results['build_s']:.0f} s. R / P: recall of the "
            "kind's planted pairs / precision of the found pairs holding a copy of that kind (blank: "
            "nothing planted or found).",
            "",
            *by_kind_table(results),
            "",
            *confirmation_lines(results),
            f"Machine: {machine['cpu']}, {machine['cores']} cores, load {machine['load_average']}, "
            f"{machine['date']}.",
            "",
        ]
    )


if __name__ == "__main__":
    raise SystemExit(main())
