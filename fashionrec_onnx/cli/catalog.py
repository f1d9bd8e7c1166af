"""Building and keeping a catalog: `index`, `remove`, `check`, `info`, `rebuild`, `reduce`."""

from __future__ import annotations

import argparse
import json

from .common import (
    Handler,
    _build_args,
    _catalog_arg,
    _cmd_index,
    _shorten,
    fraction,
    path,
    positive,
    subcommand,
    text,
    whole_number,
)


def _index(sub: argparse._SubParsersAction) -> None:
    index = subcommand(
        sub,
        "index",
        "embed a folder of images into a catalog (incremental)",
        "Every image below IMAGES (recursively, hidden files skipped) is embedded and added under\n"
        "its path relative to IMAGES. The first run creates the catalog and needs --model. Later\n"
        "runs embed only new or changed files; an interrupted run resumes. Files that cannot be\n"
        "read are listed as skipped and the exit code is 1. Images whose keys were removed with\n"
        "`fashionrec remove` stay out unless --include-removed.",
        "  fashionrec index ./images --catalog ./catalog --model model.onnx\n"
        "  fashionrec index ./images --catalog ./catalog --metadata labels.csv --prune\n"
        "  fashionrec index ./shop-b --catalog ./catalog --key-prefix shop-b/",
    )
    index.add_argument("images", type=path, help="folder of images (searched recursively)")
    _catalog_arg(index)
    _build_args(index)
    index.add_argument(
        "--metadata",
        type=path,
        metavar="FILE",
        help="CSV (with a header row) or JSON lines; the key, path, id, filename or file column "
        "names one image (its relative path, else its file name, else its stem), the other columns "
        "become metadata; rows that fit no image or several are listed, and a file of which no row "
        "fits, or a row fits several images, gives exit code 1",
    )
    index.add_argument(
        "--key-prefix",
        type=text,
        metavar="PREFIX",
        default="",
        help="put before every key (e.g. shop-b/) to index several folders into one catalog",
    )
    index.add_argument("--prune", action="store_true", help="remove items whose file has gone")
    index.add_argument(
        "--include-removed",
        action="store_true",
        help="add back images whose keys were removed with `fashionrec remove` (left out otherwise)",
    )


def _maintenance(sub: argparse._SubParsersAction) -> None:
    remove = subcommand(
        sub,
        "remove",
        "remove items by key",
        "Keys are what `search` prints (the key prefix, then the path relative to the indexed\n"
        "folder). Keys not in the catalog are listed, and the exit code is then 1. Removed keys\n"
        "are remembered: `index` leaves their files out unless --include-removed.",
        "  fashionrec remove dress/test-00013.png bag/test-00598.png --catalog ./catalog",
    )
    remove.add_argument("keys", nargs="+", type=text, metavar="KEY", help="key of an item to remove")
    _catalog_arg(remove)

    check = subcommand(
        sub,
        "check",
        "recall@k of HNSW against exact KNN, and consistency",
        "Searches the graph with a sample of the catalog's own items and compares the hits with\n"
        "the exact nearest neighbours (a blocked matrix product over the stored vectors, held to\n"
        "scikit-learn's brute-force answers in the tests), and checks that store and graph agree.\n"
        "Exit code 1 when recall is below --min-recall or a problem is found.",
        "  fashionrec check --catalog ./catalog\n"
        "  fashionrec check --catalog ./catalog -k 10 --sample 200 --min-recall 0.9",
    )
    _catalog_arg(check)
    check.add_argument("-k", type=positive, metavar="N", default=5, help="neighbours compared per query")
    check.add_argument("--sample", type=positive, metavar="N", default=1000, help="number of query items")
    check.add_argument(
        "--min-recall",
        type=fraction,
        metavar="R",
        default=0.95,
        help="exit code 1 when recall is below R (0 to 1)",
    )

    info = subcommand(
        sub,
        "info",
        "what a catalog holds and how it was built",
        "Items, model (fingerprint, weights, precision), HNSW parameters, the PCA graph (reduction)\n"
        "or the one planned (reduce_to), the product field, sizes on disk, and the categories found\n"
        "in the metadata.",
        "  fashionrec info --catalog ./catalog\n  fashionrec info --catalog ./catalog --json",
    )
    _catalog_arg(info)
    info.add_argument("--json", action="store_true", help="print one JSON object instead of lines")

    rebuild = subcommand(
        sub,
        "rebuild",
        "recreate the HNSW graph from the stored vectors",
        "Nothing is re-embedded: the catalog keeps every vector. The recovery for a missing or\n"
        "damaged graph file, and the way to change the search breadth ef.",
        "  fashionrec rebuild --catalog ./catalog\n  fashionrec rebuild --catalog ./catalog --ef 256",
    )
    _catalog_arg(rebuild)
    rebuild.add_argument(
        "--ef", type=positive, metavar="N", help="also set the search breadth ef (higher: better recall)"
    )

    reduce = subcommand(
        sub,
        "reduce",
        "index a PCA projection (smaller, faster graph)",
        "The graph is built on a PCA projection of the stored vectors, and its candidates are\n"
        "re-ranked with the full vectors. Prints the recall against exact full-dimension search.",
        "  fashionrec reduce --catalog ./catalog --dim 256\n"
        "  fashionrec reduce --catalog ./catalog --dim 0    # back to full vectors",
    )
    _catalog_arg(reduce)
    reduce.add_argument(
        "--dim",
        type=whole_number(0),
        required=True,
        metavar="N",
        help="target dimension (0: back to full vectors)",
    )
    reduce.add_argument("--whiten", action="store_true", help="scale every component to unit variance")


def _cmd_remove(args: argparse.Namespace) -> int:
    from ..catalog import Catalog

    keys = list(dict.fromkeys(args.keys))
    with Catalog.open(args.catalog) as catalog:
        unknown = [key for key in keys if key not in catalog]
        removed = catalog.remove(*keys)
        print(f"removed {removed} of {len(keys)} keys; {len(catalog)} items left")
    for key in unknown:
        print(f"  not in the catalog: {_shorten(key)}")
    return 1 if unknown else 0


def _cmd_check(args: argparse.Namespace) -> int:
    from ..catalog import Catalog

    with Catalog.open(args.catalog, readonly=True) as catalog:
        problems = catalog.verify()
        report = catalog.check(k=args.k, sample=args.sample)
    for problem in problems:
        print(f"problem: {problem}")
    print(
        f"recall@{report.k} of HNSW vs exact KNN: {report.recall:.4f} "
        f"({report.queries} queries over {report.items} items; M={report.M}, "
        f"ef_construction={report.ef_construction}, ef={report.ef})"
    )
    if report.recall < args.min_recall:
        print(f"recall below {args.min_recall}: {report.advice(args.catalog)}")
    return 1 if problems or report.recall < args.min_recall else 0


def _cmd_info(args: argparse.Namespace) -> int:
    from ..catalog import Catalog
    from ..catalog.facade import REDUCE_AFTER

    with Catalog.open(args.catalog, readonly=True) as catalog:
        summary = catalog.summary()
        summary["categories"] = catalog.categories()
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for name, value in summary.items():
            if name == "reduce_to" and value:
                value = f"{value} (planned: a PCA graph fitted once {REDUCE_AFTER:,} items are in)"
            print(f"{name:>18}: {value}")
    return 0


def _cmd_rebuild(args: argparse.Namespace) -> int:
    from ..catalog import Catalog

    with Catalog.open(args.catalog, rebuild=True) as catalog:
        if args.ef is not None:
            catalog.set_ef(args.ef)
        left_out = catalog.left_out_of_graph()
        print(f"rebuilt the HNSW graph of {args.catalog} from {len(catalog) - len(left_out)} stored vectors")
    if left_out:
        shown = ", ".join(_shorten(key) for key in left_out[:5])
        print(
            f"  left out {len(left_out)} item(s) whose stored vector is not finite (the vector file is "
            f"damaged there): {shown}{' ...' if len(left_out) > 5 else ''}; remove them and index again"
        )
        return 1
    return 0


def _cmd_reduce(args: argparse.Namespace) -> int:
    from ..catalog import Catalog

    with Catalog.open(args.catalog, load_graph=False) as catalog:  # works with a lost PCA file
        pca = catalog.reduce(None if args.dim == 0 else args.dim, whiten=args.whiten)
        if pca is None:
            print(f"{args.catalog}: the HNSW graph indexes the full {catalog.dim}-d vectors again")
        else:
            print(
                f"{args.catalog}: HNSW graph on PCA {catalog.dim}->{pca.dim} "
                f"({pca.explained_variance_ratio:.1%} of variance{', whitened' if pca.whiten else ''})"
            )
        report = catalog.check(k=5, sample=min(1000, len(catalog)))
    print(f"recall@5 against exact full-dimension search: {report.recall:.4f}")
    if report.recall_reduced is not None:
        print(f"recall@5 of the graph against exact search in the reduced space: {report.recall_reduced:.4f}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register index, remove, check, info, rebuild, reduce on the `fashionrec` parser."""
    _index(sub)
    _maintenance(sub)


HANDLERS: dict[str, Handler] = {
    "index": _cmd_index,
    "remove": _cmd_remove,
    "check": _cmd_check,
    "info": _cmd_info,
    "rebuild": _cmd_rebuild,
    "reduce": _cmd_reduce,
}
