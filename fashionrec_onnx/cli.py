"""The `fashionrec` command: thin argument parsing over the library.

Library errors become one line on stderr with exit code 2; "ran but found a problem" (skipped
files, recall below the bar, an inconsistent catalog) is exit code 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from . import __version__
from .errors import CatalogError, FashionrecError
from .index import DEFAULT_EF, DEFAULT_EF_CONSTRUCTION, DEFAULT_M

Handler = Callable[[argparse.Namespace], int]
log = logging.getLogger("fashionrec")


def _err(message: str) -> None:
    print(message, file=sys.stderr)


# -- export -------------------------------------------------------------------------------


def _add_export(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("export", help="export ResNet50 + pooling to an ONNX embedding model")
    # The export code lives in export/ (installed as fashionrec_export); it is imported only when
    # used, so the rest of the CLI never loads TensorFlow.
    try:
        from fashionrec_export.export_resnet50 import add_arguments
    except ImportError:  # pragma: no cover - package installed without export/
        parser.set_defaults(handler=_export_missing)
        return
    add_arguments(parser)
    parser.set_defaults(handler=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from fashionrec_export.export_resnet50 import run

    return run(args)


def _export_missing(args: argparse.Namespace) -> int:
    raise FashionrecError(
        "the export code is not installed; install with `pip install 'fashionrec-onnx[export]'`."
    )


# -- catalog commands ---------------------------------------------------------------------


def _catalog_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--catalog", required=True, type=Path, help="catalog directory")


def _build_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, help="ONNX model (needed when the catalog is new)")
    parser.add_argument("--M", type=int, default=DEFAULT_M, help="HNSW links per node (new catalogs)")
    parser.add_argument("--ef-construction", type=int, default=DEFAULT_EF_CONSTRUCTION)
    parser.add_argument("--ef", type=int, default=DEFAULT_EF, help="HNSW search breadth (new catalogs)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, help="onnxruntime threads (default: all cores)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "--vector-dtype",
        choices=("float32", "float16"),
        default="float32",
        help="stored vectors (new catalogs)",
    )


def _open_for_indexing(args: argparse.Namespace):  # -> Catalog
    from .catalog import Catalog

    return Catalog.open_or_create(
        args.catalog,
        args.model,
        M=args.M,
        ef_construction=args.ef_construction,
        ef=args.ef,
        threads=args.threads,
        vector_dtype=args.vector_dtype,
    )


def _print_index_report(report) -> int:  # report: IndexReport
    print(
        f"indexed {report.scanned} files in {report.seconds:.1f}s: {report.added} added, "
        f"{report.updated} updated, {report.unchanged} unchanged, {report.moved} moved, "
        f"{report.removed} removed, "
        f"{len(report.failures)} skipped"
    )
    for failure in report.failures:
        print(f"  skipped {failure.source}: {failure.reason}")
    return 1 if report.failures else 0


def _cmd_index(args: argparse.Namespace) -> int:
    with _open_for_indexing(args) as catalog:
        report = catalog.index_folder(
            args.images,
            metadata=args.metadata,
            prune=args.prune,
            progress=not args.quiet,
            batch_size=args.batch_size,
            key_prefix=args.key_prefix,
        )
        code = _print_index_report(report)
        print(f"catalog {args.catalog}: {len(catalog)} items")
    return code


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


def _cmd_search(args: argparse.Namespace) -> int:
    from .catalog import Catalog

    with Catalog.open(args.catalog, args.model, readonly=True, threads=args.threads) as catalog:
        method = catalog.exact_search if args.exact else catalog.search
        hits = method(args.query, k=args.k, filter=_parse_filters(args.filter))
    if args.json:
        print(json.dumps([asdict(hit) for hit in hits], indent=2, ensure_ascii=False))
        return 0
    if not hits:
        print("no results")
    for hit in hits:
        extra = "  ".join(f"{k}={v}" for k, v in sorted(hit.metadata.items()))
        print(f"{hit.rank:>3}  {hit.similarity:.4f}  {hit.key}  {extra}".rstrip())
    return 0


def _cmd_remove(args: argparse.Namespace) -> int:
    from .catalog import Catalog

    with Catalog.open(args.catalog) as catalog:
        removed = catalog.remove(*args.keys)
        print(f"removed {removed} of {len(args.keys)} keys; {len(catalog)} items left")
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from .catalog import Catalog

    with Catalog.open(args.catalog, readonly=True) as catalog:
        problems = catalog.verify()
        report = catalog.check(k=args.k, sample=args.sample)
    for problem in problems:
        print(f"problem: {problem}")
    print(
        f"recall@{report.k} of HNSW vs exact sklearn KNN: {report.recall:.4f} "
        f"({report.queries} queries over {report.items} items; M={report.M}, "
        f"ef_construction={report.ef_construction}, ef={report.ef})"
    )
    if report.recall < args.min_recall:
        print(
            f"recall below {args.min_recall}: raise ef "
            f"(`fashionrec rebuild --catalog {args.catalog} --ef {2 * report.ef}`)"
        )
    return 1 if problems or report.recall < args.min_recall else 0


def _cmd_info(args: argparse.Namespace) -> int:
    from .catalog import Catalog

    with Catalog.open(args.catalog, readonly=True) as catalog:
        summary = catalog.summary()
        summary["categories"] = catalog.categories()
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for name, value in summary.items():
            print(f"{name:>18}: {value}")
    return 0


def _cmd_rebuild(args: argparse.Namespace) -> int:
    from .catalog import Catalog

    with Catalog.open(args.catalog, rebuild=True) as catalog:
        if args.ef:
            catalog.set_ef(args.ef)
        print(f"rebuilt the HNSW graph of {args.catalog} from {len(catalog)} stored vectors")
    return 0


def _cmd_reduce(args: argparse.Namespace) -> int:
    from .catalog import Catalog

    with Catalog.open(args.catalog) as catalog:
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


def _cmd_import_fashion_mnist(args: argparse.Namespace) -> int:
    from .datasets import export_split

    images = args.catalog / "images"
    labels = export_split(images, split=args.split, limit=args.limit, source=args.source)
    args.images, args.metadata, args.prune, args.key_prefix = images, labels, False, ""
    return _cmd_index(args)


def _add_catalog_commands(sub: argparse._SubParsersAction) -> None:
    index = sub.add_parser("index", help="embed a folder of images into a catalog (incremental)")
    index.add_argument("images", type=Path, help="folder of images (searched recursively)")
    _catalog_arg(index)
    _build_args(index)
    index.add_argument("--metadata", type=Path, help="CSV or JSON lines with a key/path column")
    index.add_argument(
        "--key-prefix",
        default="",
        help="put before every key (e.g. shop-b/) to index several folders into one catalog",
    )
    index.add_argument("--prune", action="store_true", help="remove items whose file has gone")
    index.set_defaults(handler=_cmd_index)

    search = sub.add_parser("search", help="the most similar items to an image or a catalog key")
    search.add_argument("query", help="image file, or the key of an item (more like this)")
    _catalog_arg(search)
    search.add_argument("-k", type=int, default=5, help="number of results (default 5)")
    search.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE")
    search.add_argument("--exact", action="store_true", help="exact sklearn search instead of HNSW")
    search.add_argument("--json", action="store_true")
    search.add_argument("--model", type=Path, help="model (default: the one the catalog records)")
    search.add_argument("--threads", type=int)
    search.set_defaults(handler=_cmd_search)

    remove = sub.add_parser("remove", help="remove items by key")
    remove.add_argument("keys", nargs="+")
    _catalog_arg(remove)
    remove.set_defaults(handler=_cmd_remove)

    check = sub.add_parser("check", help="recall@k of HNSW against exact KNN, and consistency")
    _catalog_arg(check)
    check.add_argument("-k", type=int, default=5)
    check.add_argument("--sample", type=int, default=1000, help="number of query items")
    check.add_argument("--min-recall", type=float, default=0.95, help="exit 1 below this")
    check.set_defaults(handler=_cmd_check)

    info = sub.add_parser("info", help="what a catalog holds and how it was built")
    _catalog_arg(info)
    info.add_argument("--json", action="store_true")
    info.set_defaults(handler=_cmd_info)

    rebuild = sub.add_parser("rebuild", help="recreate the HNSW graph from the stored vectors")
    _catalog_arg(rebuild)
    rebuild.add_argument("--ef", type=int, help="also set the search ef")
    rebuild.set_defaults(handler=_cmd_rebuild)

    reduce = sub.add_parser("reduce", help="index a PCA projection (smaller, faster graph)")
    _catalog_arg(reduce)
    reduce.add_argument("--dim", type=int, required=True, help="target dimension (0: back to full)")
    reduce.add_argument("--whiten", action="store_true")
    reduce.set_defaults(handler=_cmd_reduce)

    fmnist = sub.add_parser("import-fashion-mnist", help="index Fashion-MNIST (real labelled images)")
    _catalog_arg(fmnist)
    _build_args(fmnist)
    fmnist.add_argument("--split", choices=("test", "train", "all"), default="test")
    fmnist.add_argument("--limit", type=int, help="at most this many images per split")
    fmnist.add_argument("--source", type=Path, help="folder with the IDX files")
    fmnist.set_defaults(handler=_cmd_import_fashion_mnist)


# -- demo ---------------------------------------------------------------------------------


def _cmd_demo(args: argparse.Namespace) -> int:
    try:
        from fashionrec_demo.app import RANDOM_WEIGHTS_BANNER, build_app, default_catalog, launch
    except ImportError as exc:
        raise FashionrecError(
            f"the demo needs gradio ({exc}); install with `pip install 'fashionrec-onnx[demo,export]'`."
        ) from exc
    from .catalog import Catalog

    if args.catalog:
        catalog = Catalog.open(args.catalog, args.model, readonly=True)
        banner = RANDOM_WEIGHTS_BANNER if catalog.info.weights.startswith("random") else None
    else:
        catalog, banner = default_catalog(args.home, args.model)
    print(f"serving {len(catalog)} products on http://{args.host}:{args.port} (Ctrl+C to stop)")
    try:
        launch(build_app(catalog, banner=banner), host=args.host, port=args.port)
    finally:
        catalog.close()
    return 0


def _add_demo(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser("demo", help="run the Gradio search page")
    demo.add_argument("--catalog", type=Path, help="catalog to search (default: the bundled sample)")
    demo.add_argument("--model", type=Path, help="model (default: exported on first run)")
    demo.add_argument("--home", type=Path, help="cache for the default model and catalog")
    demo.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    demo.add_argument("--port", type=int, default=7860)
    demo.set_defaults(handler=_cmd_demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fashionrec", description="Visual product search for fashion.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"fashionrec-onnx {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_export(sub)
    _add_catalog_commands(sub)
    _add_demo(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    handler: Handler = args.handler
    try:
        return handler(args)
    except FashionrecError as exc:
        _err(f"error: {exc}")
        return 2
    except KeyboardInterrupt:
        _err("interrupted; committed batches are kept, run the same command again to resume")
        return 130


if __name__ == "__main__":
    sys.exit(main())
