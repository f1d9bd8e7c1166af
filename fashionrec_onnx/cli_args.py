"""The grammar of the `fashionrec` command: its subcommands, their arguments, types and help.

A bad value is refused by argparse itself (a usage line, one error line, exit code 2) before any
catalog, model or image is opened, so a typo never leaves anything half-made behind. What each
command does lives in `cli`; here every subcommand only records its name (``args.command``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from . import __version__
from .errors import BadArgumentError
from .images import parse_box
from .index import DEFAULT_EF, DEFAULT_EF_CONSTRUCTION, DEFAULT_M
from .scan import is_utf8, printable


def whole_number(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer from ``low`` (to ``high``, when given)."""
    bounds = f"of at least {low}" if high is None else f"from {low} to {high}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be a whole number {bounds}, not {text!r}")
        return value

    return parse


positive = whole_number(1)


def fraction(text: str) -> float:
    """An argparse type: a number from 0 to 1 (a recall)."""
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not 0.0 <= value <= 1.0:  # NaN fails here too
        raise argparse.ArgumentTypeError(f"must be a number from 0 to 1, not {text!r}")
    return value


def similarity(text: str) -> float:
    """An argparse type: a cosine similarity above 0, up to 1 (a near-duplicate threshold)."""
    value = fraction(text)
    if value == 0.0:
        raise argparse.ArgumentTypeError(f"must be a number above 0, up to 1, not {text!r}")
    return value


def ks(value: str) -> tuple[int, ...]:
    """An argparse type: ranks to measure at, ``1,5,10``."""
    try:
        numbers = tuple(sorted({int(part) for part in value.split(",")}))
    except ValueError:
        numbers = ()
    if not numbers or numbers[0] < 1:
        raise argparse.ArgumentTypeError(
            f"must be whole numbers of at least 1 with commas, like 1,5,10, not {value!r}"
        )
    return numbers


def box(value: str) -> tuple[int, int, int, int]:
    """An argparse type: a region of the query image, ``LEFT,TOP,RIGHT,BOTTOM`` in pixels."""
    try:
        return parse_box(value)
    except BadArgumentError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def text(value: str) -> str:
    """An argparse type for keys and prefixes: bytes that are not UTF-8 can never be a key."""
    if not is_utf8(value):
        raise argparse.ArgumentTypeError(f"'{printable(value)}' is not valid UTF-8")
    return value


def path(value: str) -> Path:
    """An argparse type for paths the catalog stores or the command prints: UTF-8 only."""
    return Path(text(value))


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and examples as written; every option's default shown unless it has none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help = action.help or ""
        default = action.default
        unset = default is None or default is False or default is argparse.SUPPRESS
        if unset or default in ([], "") or "%(default)" in help or not action.option_strings:
            return help
        return f"{help} (default: %(default)s)"


def subcommand(
    sub: argparse._SubParsersAction, name: str, summary: str, description: str, examples: str
) -> argparse.ArgumentParser:
    """A subcommand whose --help page has a description and examples."""
    return sub.add_parser(
        name,
        help=summary,
        description=f"{summary[0].upper()}{summary[1:]}.\n\n{description}",
        epilog=f"examples:\n{examples}",
        formatter_class=HelpFormatter,
    )


# -- the commands -------------------------------------------------------------------------


def _export(sub: argparse._SubParsersAction) -> None:
    parser = subcommand(
        sub,
        "export",
        "export ResNet50 + pooling to an ONNX embedding model",
        "Needs the export extra (TensorFlow, tf2onnx), and only here. The model's metadata records\n"
        "how it was made; a catalog built with it refuses any other model.",
        "  fashionrec export --out model.onnx                        # ImageNet weights\n"
        "  fashionrec export --weights random --seed 0 --out m.onnx  # offline smoke runs",
    )
    # The export code lives in export/ (installed as fashionrec_export); its arguments come from
    # there, and TensorFlow is imported only when an export runs.
    try:
        from fashionrec_export.export_resnet50 import add_arguments
    except ImportError:  # pragma: no cover - package installed without export/
        return
    add_arguments(parser)


def _catalog_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--catalog", required=True, type=path, metavar="DIR", help="catalog directory")


def _threads_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threads", type=positive, metavar="N", help="onnxruntime threads (default: all cores)"
    )


def _build_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", type=path, metavar="FILE", help="ONNX model (needed when the catalog is new)"
    )
    parser.add_argument(
        "--copy-model",
        action="store_true",
        help="copy --model into the catalog directory (as model.onnx), so the directory moves as one",
    )
    parser.add_argument(
        "--M",
        type=whole_number(2, 256),
        default=DEFAULT_M,
        metavar="N",
        help="HNSW links per node, for a new catalog",
    )
    parser.add_argument(
        "--ef-construction",
        type=positive,
        default=DEFAULT_EF_CONSTRUCTION,
        metavar="N",
        help="HNSW build breadth, for a new catalog: higher builds slower and finds better links",
    )
    parser.add_argument(
        "--ef", type=positive, default=DEFAULT_EF, metavar="N", help="HNSW search breadth, for a new catalog"
    )
    parser.add_argument("--batch-size", type=positive, default=32, metavar="N", help="images per model run")
    _threads_arg(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "--vector-dtype",
        choices=("float32", "float16"),
        default="float32",
        help="precision of the stored vectors, for a new catalog",
    )
    parser.add_argument(
        "--reduce",
        type=whole_number(1, 2048),
        metavar="DIM",
        help="for a new catalog: a PCA graph of DIM dimensions, fitted once 20,000 items are in "
        "(256 suits a million images; see README 'A million images')",
    )
    parser.add_argument(
        "--product-field",
        type=text,
        metavar="FIELD",
        help="the metadata field holding each image's product id, for searches grouped by product "
        "(recorded in the catalog; give it again to change it)",
    )


FILTER_HELP = (
    "only items whose metadata FIELD equals VALUE (exactly, case included). Repeat it: the same "
    "field several times means any of those values (--filter category=Dress --filter "
    "category=Bag), different fields must all match"
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
        help="results unlike this image or item (repeat it for several); see README 'Several queries'",
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
        "exact nearest neighbours (scikit-learn), and checks that store and graph agree. Exit code\n"
        "1 when recall is below --min-recall or a problem is found.",
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
        "Items, model (fingerprint, weights, precision), HNSW parameters, sizes on disk, and the\n"
        "categories found in the metadata.",
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


def _duplicates(sub: argparse._SubParsersAction) -> None:
    duplicates = subcommand(
        sub,
        "duplicates",
        "groups of near-identical images (re-uploads, resized or recompressed copies)",
        "Each item's nearest neighbours in the HNSW graph are compared (never every pair); pairs at\n"
        "or above the similarity threshold are joined into groups. Without --threshold it is\n"
        "calibrated on the catalog: a fifth of the median distance between an item and its nearest\n"
        "neighbour (what similarity means depends on the model). Prints each group with the\n"
        "similarity of every pair in it.",
        "  fashionrec duplicates --catalog ./catalog\n"
        "  fashionrec duplicates --catalog ./catalog --threshold 0.97 --csv > duplicates.csv",
    )
    _catalog_arg(duplicates)
    duplicates.add_argument(
        "--threshold",
        type=similarity,
        metavar="T",
        help="cosine similarity from which two images are near-duplicates (default: calibrated)",
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


def _demo(sub: argparse._SubParsersAction) -> None:
    demo = subcommand(
        sub,
        "demo",
        "run the Gradio search page",
        "Without --catalog it serves the bundled Fashion-MNIST sample: the first start exports the\n"
        "model (ImageNet weights, or seeded random ones offline, with a banner) and indexes the\n"
        "sample into --home; later starts reuse both. Needs the demo extra (Gradio).",
        "  fashionrec demo\n  fashionrec demo --catalog ./catalog --port 7861",
    )
    demo.add_argument(
        "--catalog", type=path, metavar="DIR", help="catalog to search (default: the bundled sample)"
    )
    demo.add_argument("--model", type=path, metavar="FILE", help="model (default: exported on first run)")
    demo.add_argument(
        "--home",
        type=path,
        metavar="DIR",
        help="cache for the default model and catalog (default: $FASHIONREC_HOME or ~/.cache/fashionrec)",
    )
    demo.add_argument(
        "--retry-weights",
        action="store_true",
        help="try the ImageNet weights again after an earlier start found them unavailable",
    )
    demo.add_argument(
        "--host", default="127.0.0.1", help="address to listen on; 0.0.0.0 lets other machines in"
    )
    demo.add_argument(
        "--port", type=whole_number(1, 65535), metavar="N", default=7860, help="port to serve on"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fashionrec",
        description="Visual product search for fashion.",
        epilog="`fashionrec COMMAND --help` describes a command, with examples.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"fashionrec-onnx {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    from .cli_refine import add_commands as _refine
    from .cli_serve import add_commands as _serve
    from .cli_sync import add_commands as _sync
    from .cli_vectors import add_commands as _vectors  # they build on the helpers above

    commands = (_export, _index, _search, _maintenance, _duplicates, _evaluate, _import_fashion_mnist)
    for add in (*commands, _vectors, _sync, _refine, _demo, _serve):
        add(sub)
    return parser
