"""The `fashionrec` command: what each subcommand does (its arguments are in `cli_args`).

Library errors become one line on stderr with exit code 2, and so do file system errors and bad
arguments (refused by argparse before anything is opened); "ran but found a problem" (skipped
files, unknown keys, an empty catalog, recall below the bar) is exit code 1.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import asdict

from .cli_args import build_parser
from .cli_refine import HANDLERS as REFINE_HANDLERS
from .cli_serve import HANDLERS as SERVE_HANDLERS
from .cli_sync import HANDLERS as SYNC_HANDLERS
from .cli_vectors import HANDLERS as VECTOR_HANDLERS
from .errors import CatalogError, FashionrecError
from .images import IMAGE_SUFFIXES
from .scan import printable

Handler = Callable[[argparse.Namespace], int]
log = logging.getLogger("fashionrec")
SHOWN_CHARS = 60  # of a name in a message; the rest is counted, not printed


def _err(message: str) -> None:
    print(message, file=sys.stderr)


def _shorten(name: str | bytes | os.PathLike) -> str:
    """A name as it can be printed, cut when too long to read (a query of 5,000 characters)."""
    shown = printable(os.fsdecode(name))
    return shown if len(shown) <= SHOWN_CHARS else f"{shown[:SHOWN_CHARS]}... ({len(shown)} characters)"


def _os_error(exc: OSError) -> str:
    """One line for a file system error: what failed, on which file."""
    if exc.filename is None:
        return printable(str(exc))
    return f"{exc.strerror or exc}: {_shorten(exc.filename)}"


def _cmd_export(args: argparse.Namespace) -> int:
    try:
        from fashionrec_export.export_resnet50 import run
    except ImportError as exc:  # pragma: no cover - package installed without export/
        raise FashionrecError(
            "the export code is not installed; install with `pip install 'fashionrec-onnx[export]'`."
        ) from exc
    return run(args)


def _open_for_indexing(args: argparse.Namespace):  # -> Catalog
    from .catalog import Catalog
    from .catalog.portable import copy_model_into

    if args.copy_model and args.model is None:
        raise CatalogError("--copy-model copies the --model given; pass --model FILE too.")
    model = copy_model_into(args.catalog, args.model) if args.copy_model else args.model
    return Catalog.open_or_create(
        args.catalog,
        model,
        M=args.M,
        ef_construction=args.ef_construction,
        ef=args.ef,
        threads=args.threads,
        vector_dtype=args.vector_dtype,
        reduce_to=args.reduce,
        product_field=args.product_field,
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
    if report.skipped_removed:
        print(
            f"  left out {report.skipped_removed} files whose keys were removed with `fashionrec remove` "
            "(--include-removed adds them back)"
        )
    if report.metadata is not None:
        for line in report.metadata.lines():
            print(line)
    return 1 if report.failures or (report.metadata is not None and report.metadata.problem) else 0


def _cmd_index(args: argparse.Namespace) -> int:
    from .scan import read_metadata, scan_folder

    # Everything that can be checked without the model is checked before a catalog is created,
    # so a wrong folder or metadata file never leaves an empty catalog behind.
    metadata = read_metadata(args.metadata) if args.metadata else None
    first = next(scan_folder(args.images, args.key_prefix, on_skip=lambda skipped: None), None)
    if first is None and not args.prune:
        raise CatalogError(
            f"no image files in {args.images} ({', '.join(sorted(IMAGE_SUFFIXES))}); nothing was indexed."
        )
    with _open_for_indexing(args) as catalog:
        report = catalog.index_folder(
            args.images,
            metadata=metadata,
            prune=args.prune,
            progress=not args.quiet,
            batch_size=args.batch_size,
            key_prefix=args.key_prefix,
            readd_removed=args.include_removed,
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
        print(f"{hit.rank:>3}  {hit.similarity:.4f}  {hit.key}  {extra}{photos}".rstrip())
    return 0


def _cmd_duplicates(args: argparse.Namespace) -> int:
    from .catalog import Catalog

    with Catalog.open(args.catalog, readonly=True) as catalog:
        report = catalog.duplicates(args.threshold, neighbours=args.neighbours)
    if args.json:
        groups = [
            {"keys": list(g.keys), "pairs": [{"key": a, "other": b, "similarity": s} for a, b, s in g.pairs]}
            for g in report
        ]
        summary = {"threshold": report.threshold, "calibrated": report.calibrated, "items": report.items}
        print(json.dumps({**summary, "groups": groups}, indent=2, ensure_ascii=False))
        return 0
    if args.csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(["group", "key", "other", "similarity"])
        for number, group in enumerate(report, 1):
            writer.writerows([number, a, b, f"{s:.6f}"] for a, b, s in group.pairs)
        return 0
    how = "calibrated on this catalog" if report.calibrated else "given"
    print(
        f"{len(report)} groups of near-duplicates ({sum(map(len, report))} images) among "
        f"{report.items} items; similarity threshold {report.threshold:.4f} ({how})"
    )
    for number, group in enumerate(report, 1):
        print(f"group {number}: {len(group)} images")
        for a, b, s in group.pairs:
            print(f"  {s:.4f}  {a}  {b}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .catalog import Catalog
    from .evaluate import evaluate
    from .evaluate_report import table, write

    with contextlib.ExitStack() as stack:
        catalog = stack.enter_context(Catalog.open(args.catalog, readonly=True))
        others = [stack.enter_context(Catalog.open(other, readonly=True)) for other in args.compare]
        evaluation = evaluate(
            catalog,
            args.label_field,
            ks=args.k,
            queries=args.queries,
            seed=args.seed,
            compare=others,
            baseline=not args.no_baseline,
            exact=args.exact,
            product_field=args.product_field,
        )
    print(table(evaluation))
    if args.out:
        written = write(evaluation, args.out)
        print(f"wrote {', '.join(path.name for path in written)} to {args.out}")
    return 0


def _cmd_remove(args: argparse.Namespace) -> int:
    from .catalog import Catalog

    keys = list(dict.fromkeys(args.keys))
    with Catalog.open(args.catalog) as catalog:
        unknown = [key for key in keys if key not in catalog]
        removed = catalog.remove(*keys)
        print(f"removed {removed} of {len(keys)} keys; {len(catalog)} items left")
    for key in unknown:
        print(f"  not in the catalog: {_shorten(key)}")
    return 1 if unknown else 0


def _cmd_check(args: argparse.Namespace) -> int:
    from .catalog import Catalog

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
        if args.ef is not None:
            catalog.set_ef(args.ef)
        print(f"rebuilt the HNSW graph of {args.catalog} from {len(catalog)} stored vectors")
    return 0


def _cmd_reduce(args: argparse.Namespace) -> int:
    from .catalog import Catalog

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


def _cmd_import_fashion_mnist(args: argparse.Namespace) -> int:
    from .datasets import export_split

    images = args.catalog / "images"
    labels = export_split(images, split=args.split, limit=args.limit, source=args.source)
    args.images, args.metadata, args.prune, args.key_prefix = images, labels, False, ""
    args.include_removed = False
    return _cmd_index(args)


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
        catalog, banner = default_catalog(args.home, args.model, args.retry_weights)
    products = catalog.product_count()
    size = f"{len(catalog)} photos" + (f" of {products} products" if products is not None else "")
    print(f"serving {size} on http://{args.host}:{args.port} (Ctrl+C to stop)")
    try:
        launch(build_app(catalog, banner=banner), host=args.host, port=args.port)
    finally:
        catalog.close()
    return 0


HANDLERS: dict[str, Handler] = {
    "export": _cmd_export,
    "index": _cmd_index,
    "search": _cmd_search,
    "remove": _cmd_remove,
    "duplicates": _cmd_duplicates,
    "evaluate": _cmd_evaluate,
    "check": _cmd_check,
    "info": _cmd_info,
    "rebuild": _cmd_rebuild,
    "reduce": _cmd_reduce,
    "import-fashion-mnist": _cmd_import_fashion_mnist,
    "demo": _cmd_demo,
    **VECTOR_HANDLERS,
    **SERVE_HANDLERS,
    **SYNC_HANDLERS,
    **REFINE_HANDLERS,
}


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit code (argparse's 2 for a bad argument, 0 for --help)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        force=True,  # a second main() in one process logs to the current stderr
    )
    try:
        return HANDLERS[args.command](args)
    except FashionrecError as exc:
        log.debug("the error came from here", exc_info=True)
        _err(f"error: {exc}")
        return 2
    except OSError as exc:
        log.debug("the error came from here", exc_info=True)
        _err(f"error: {_os_error(exc)}")
        return 2
    except KeyboardInterrupt:
        _err("interrupted; committed batches are kept, run the same command again to resume")
        return 130


if __name__ == "__main__":
    sys.exit(main())
