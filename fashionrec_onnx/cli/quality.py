"""Measuring search quality: `evaluate`, and `import-fashion-mnist` for labelled images."""

from __future__ import annotations

import argparse
import contextlib

from .common import (
    Handler,
    _build_args,
    _catalog_arg,
    _cmd_index,
    ks,
    path,
    positive,
    subcommand,
    text,
    whole_number,
)


def _evaluate(sub: argparse._SubParsersAction) -> None:
    evaluate = subcommand(
        sub,
        "evaluate",
        "retrieval quality on your own labelled catalog (precision@k, mAP@k)",
        'Each query is a catalog item searched as "more like this" (itself left out, and its whole\n'
        "product when items have a product field); a hit is relevant when its label is the\n"
        "query's. Prints precision@k and mAP@k overall and per label for the catalog, a raw-pixels\n"
        "baseline (grey thumbnails, exact search) and every --compare catalog, all on the same\n"
        "keys. --out writes a JSON file, a Markdown report and plots (needs matplotlib).",
        "  fashionrec evaluate --catalog ./catalog --label-field category\n"
        "  fashionrec evaluate --catalog ./fp32 --compare ./int8 ./pca256 -k 1,5,10 --out report/",
    )
    _catalog_arg(evaluate)
    evaluate.add_argument(
        "--label-field",
        type=text,
        default="category",
        metavar="FIELD",
        help="metadata field a hit must share",
    )
    evaluate.add_argument("-k", type=ks, default="1,5,10", metavar="K,K,...", help="ranks to measure at")
    evaluate.add_argument(
        "--queries",
        type=positive,
        default=1000,
        metavar="N",
        help="labelled items searched (a seeded sample)",
    )
    evaluate.add_argument(
        "--compare",
        type=path,
        nargs="+",
        action="extend",
        default=[],
        metavar="DIR",
        help="other catalogs of the same images (int8, PCA, another model) answering the same queries",
    )
    evaluate.add_argument(
        "--out", type=path, metavar="DIR", help="write evaluation.json, report.md and plots here"
    )
    evaluate.add_argument(
        "--exact", action="store_true", help="search every stored vector instead of the graph"
    )
    evaluate.add_argument("--no-baseline", action="store_true", help="skip the raw-pixels baseline")
    evaluate.add_argument(
        "--product-field",
        type=text,
        default="product",
        metavar="FIELD",
        help="items sharing this metadata field are one product, left out together",
    )
    evaluate.add_argument(
        "--seed", type=whole_number(0), default=0, metavar="N", help="seed of the query sample"
    )


def _import_fashion_mnist(sub: argparse._SubParsersAction) -> None:
    fmnist = subcommand(
        sub,
        "import-fashion-mnist",
        "index Fashion-MNIST (real labelled images)",
        "Writes Fashion-MNIST images (Zalando, MIT licence) as PNG files with labels.csv under\n"
        "CATALOG/images, then indexes them with their category. The IDX files come from --source,\n"
        "Debian's dataset-fashion-mnist package, or Keras' dataset cache.",
        "  fashionrec import-fashion-mnist --catalog ./fmnist --model model.onnx --limit 1000",
    )
    _catalog_arg(fmnist)
    _build_args(fmnist)
    fmnist.add_argument("--split", choices=("test", "train", "all"), default="test", help="which images")
    fmnist.add_argument(
        "--limit", type=positive, metavar="N", help="at most this many images per split (default: all)"
    )
    fmnist.add_argument("--source", type=path, metavar="DIR", help="folder with the IDX files")


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from ..catalog import Catalog
    from ..quality.evaluate import evaluate
    from ..quality.report import table, write

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


def _cmd_import_fashion_mnist(args: argparse.Namespace) -> int:
    from ..quality.datasets import export_split

    images = args.catalog / "images"
    labels = export_split(images, split=args.split, limit=args.limit, source=args.source)
    args.images, args.metadata, args.prune, args.key_prefix = images, labels, False, ""
    args.include_removed = False
    return _cmd_index(args)


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register evaluate, import-fashion-mnist on the `fashionrec` parser."""
    _evaluate(sub)
    _import_fashion_mnist(sub)


HANDLERS: dict[str, Handler] = {
    "evaluate": _cmd_evaluate,
    "import-fashion-mnist": _cmd_import_fashion_mnist,
}
