"""Asking a catalog: `search` (by image, key or vector) and `duplicates`."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from dataclasses import asdict

from ..errors import CatalogError
from .common import (
    FILTER_HELP,
    Handler,
    _catalog_arg,
    _err,
    _shorten,
    _threads_arg,
    box,
    on_one_line,
    path,
    positive,
    similarity,
    subcommand,
    text,
)


def _parse_filters(pairs: list[str]) -> dict[str, list[str]] | None:
    if not pairs:
        return None
    wanted: dict[str, list[str]] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise CatalogError(f"--filter takes key=value, got {pair!r}")
        wanted.setdefault(name, []).append(value)
    return wanted


def _search(sub: argparse._SubParsersAction) -> None:
    search = subcommand(
        sub,
        "search",
        "the most similar items to an image or a catalog key",
        'QUERY is an image file, or the key of an item in the catalog ("more like this": the item\n'
        "itself is left out, with its whole product when the catalog has a product field). Several\n"
        "QUERY and --not arguments search for mean(queries) - 0.5 * mean(--not). Each hit prints\n"
        "its rank, similarity (1 = the same image), key and metadata. Exit code 1 when the catalog\n"
        "is empty.",
        "  fashionrec search photo.jpg --catalog ./catalog -k 10\n"
        "  fashionrec search dress/test-00013.png --catalog ./catalog --filter category=Bag\n"
        "  fashionrec search photo.jpg --catalog ./catalog --filter category=Dress --filter category=Coat\n"
        "  fashionrec search photo.jpg --catalog ./catalog --json\n"
        "  fashionrec search street.jpg --catalog ./catalog --box 410,220,780,900   # the coat only\n"
        "  fashionrec search photo.jpg --catalog ./catalog --group-by product\n"
        "  fashionrec search liked-1.jpg liked-2.jpg --not disliked.jpg --catalog ./catalog",
    )
    search.add_argument(
        "query",
        nargs="+",
        help="image file, or the key of an item (more like this); several: results like all of them",
    )
    _catalog_arg(search)
    search.add_argument("-k", type=positive, metavar="N", default=5, help="number of results")
    search.add_argument("--filter", action="append", default=[], metavar="FIELD=VALUE", help=FILTER_HELP)
    search.add_argument(
        "--not",
        dest="negative",
        action="append",
        default=[],
        type=text,
        metavar="PATH_OR_KEY",
        help="results unlike this image or item (repeat it for several); see docs/products.md",
    )
    search.add_argument(
        "--group-by",
        choices=("product",),
        help="the k best distinct products, each with its best photo and its other photos "
        "(the catalog needs a product field: index --product-field)",
    )
    search.add_argument(
        "--box",
        type=box,
        metavar="L,T,R,B",
        help="search for this region of the image only: left, top, right, bottom in pixels of the "
        "upright photo (as an image viewer shows it)",
    )
    search.add_argument(
        "--exact", action="store_true", help="exact search over every stored vector instead of the HNSW graph"
    )
    search.add_argument(
        "--collapse-duplicates",
        action="store_true",
        help="one image per group of near-duplicates (see `fashionrec duplicates`); the first such "
        "search after a change finds the groups",
    )
    search.add_argument(
        "--json",
        action="store_true",
        help="print the hits as a JSON list (rank, key, path, distance, similarity, metadata, "
        "product, photos)",
    )
    search.add_argument(
        "--model", type=path, metavar="FILE", help="model (default: the one the catalog records)"
    )
    _threads_arg(search)


def _duplicates(sub: argparse._SubParsersAction) -> None:
    duplicates = subcommand(
        sub,
        "duplicates",
        "groups of near-identical images (re-uploads, resized or recompressed copies)",
        "Each item's nearest neighbours are compared (never every pair) and the pairs that are\n"
        "one photo are joined into groups. Without --threshold, items whose image file can be read\n"
        "are judged by their pixels: small thumbnails, lined up and correlated, which find copies\n"
        "at half size and with a few percent cut off (indexing keeps them in the catalog's\n"
        "thumbnails.sqlite; images indexed before are read at each run, which opens the catalog\n"
        "read-only); items without an image file by\n"
        "an embedding threshold calibrated on the catalog (a fifth of the median distance between\n"
        "an item and its nearest neighbour). --threshold judges every pair by the embeddings alone.\n"
        "Prints each group with the embedding similarity of every pair in it.",
        "  fashionrec duplicates --catalog ./catalog\n"
        "  fashionrec duplicates --catalog ./catalog --threshold 0.97 --csv > duplicates.csv",
    )
    _catalog_arg(duplicates)
    duplicates.add_argument(
        "--threshold",
        type=similarity,
        metavar="T",
        help="embedding similarity from which two images are near-duplicates (default: pixels, and a "
        "calibrated threshold for items without an image file)",
    )
    duplicates.add_argument(
        "--neighbours",
        type=positive,
        metavar="N",
        default=8,
        help="graph neighbours compared per item (more finds larger groups, slower)",
    )
    output = duplicates.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print one JSON object (threshold, groups)")
    output.add_argument(
        "--csv", action="store_true", help="print CSV rows: group, key, other key, similarity"
    )


def _cmd_search(args: argparse.Namespace) -> int:
    from ..catalog import Catalog

    wanted = _parse_filters(args.filter)
    with Catalog.open(args.catalog, args.model, readonly=True, threads=args.threads) as catalog:
        if len(catalog) == 0:
            _err(
                f"the catalog {args.catalog} is empty: add images first "
                f"(`fashionrec index IMAGES --catalog {args.catalog}`)"
            )
            return 1
        method = catalog.exact_search if args.exact else catalog.search
        query = args.query[0] if len(args.query) == 1 else args.query
        try:
            hits = method(
                query,
                k=args.k,
                filter=wanted,
                box=args.box,
                collapse_duplicates=args.collapse_duplicates,
                group_by=args.group_by,
                negative=args.negative or None,
            )
        except OSError as exc:  # a query too long to be a file name, a folder, an unreadable file
            name = exc.filename or " ".join(args.query)
            raise CatalogError(
                f"'{_shorten(name)}' is neither a key in {args.catalog} nor a readable image "
                f"file ({exc.strerror or exc})."
            ) from exc
    if args.json:
        print(json.dumps([asdict(hit) for hit in hits], indent=2, ensure_ascii=False))
        return 0
    if not hits:
        print("no results")
    for hit in hits:
        extra = "  ".join(f"{k}={v}" for k, v in sorted(hit.metadata.items()))
        photos = f"  (+{len(hit.photos)} photos)" if hit.photos else ""
        print(on_one_line(f"{hit.rank:>3}  {hit.similarity:.4f}  {hit.key}  {extra}{photos}".rstrip()))
    return 0


def _cmd_duplicates(args: argparse.Namespace) -> int:
    from ..catalog import Catalog

    # read-only: a report writes nothing (indexing keeps the thumbnails; those of items indexed
    # before are read for this run and said so in a log line)
    with Catalog.open(args.catalog, readonly=True) as catalog:
        report = catalog.duplicates(args.threshold, neighbours=args.neighbours)
    if args.json:
        groups = [
            {"keys": list(g.keys), "pairs": [{"key": a, "other": b, "similarity": s} for a, b, s in g.pairs]}
            for g in report
        ]
        summary = {
            "threshold": report.threshold,
            "calibrated": report.calibrated,
            "items": report.items,
            "judged_by_pixels": report.by_pixels,
        }
        print(json.dumps({**summary, "groups": groups}, indent=2, ensure_ascii=False))
        return 0
    if args.csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(["group", "key", "other", "similarity"])
        for number, group in enumerate(report, 1):
            writer.writerows([number, a, b, f"{s:.6f}"] for a, b, s in group.pairs)
        return 0
    if report.by_pixels:
        rest = report.items - report.by_pixels
        how = f"{report.by_pixels} judged by their pixels"
        if rest:
            how += f", {rest} without an image file by similarity {report.threshold:.4f} (calibrated)"
    else:
        calibrated = "calibrated on this catalog" if report.calibrated else "given"
        how = f"similarity threshold {report.threshold:.4f} ({calibrated})"
    print(
        f"{len(report)} groups of near-duplicates ({sum(map(len, report))} images) among "
        f"{report.items} items; {how}"
    )
    for number, group in enumerate(report, 1):
        print(f"group {number}: {len(group)} images")
        for a, b, s in group.pairs:
            print(f"  {s:.4f}  {on_one_line(a)}  {on_one_line(b)}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register search, duplicates on the `fashionrec` parser."""
    _search(sub)
    _duplicates(sub)


HANDLERS: dict[str, Handler] = {
    "search": _cmd_search,
    "duplicates": _cmd_duplicates,
}
