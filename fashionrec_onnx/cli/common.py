"""What the `fashionrec` command modules share: argument types (a bad value is refused by argparse,
one line and exit code 2, before anything is opened), the common options, and output helpers.

Every command group module (`catalog`, `search`, `quality`, `vectors`, `sync`, `serve`, `demo`,
`export`) imports this one and nothing else of the CLI; `main` assembles them.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

from ..catalog.hnsw import DEFAULT_EF, DEFAULT_EF_CONSTRUCTION, DEFAULT_M
from ..catalog.location import MilvusLocation, location, looks_like_uri
from ..errors import BadArgumentError, CatalogError
from ..feeds.scan import is_utf8, printable
from ..images import IMAGE_SUFFIXES, parse_box

Handler = Callable[[argparse.Namespace], int]
SHOWN_CHARS = 60  # of a name in a message; the rest is counted, not printed


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
    try:
        value = fraction(text)
    except argparse.ArgumentTypeError:
        value = 0.0  # one message for every number out of range (NaN, 2, -1 and 0 alike)
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
    """An argparse type for paths the catalog stores or the command prints: UTF-8 only, and not
    empty (``Path("")`` is the current directory: an unset ``$CATALOG`` would make one there)."""
    if not value:
        raise argparse.ArgumentTypeError(
            f"{value!r} is an empty path (an unset variable?); name the file or folder ('.' for this one)"
        )
    return Path(text(value))


def host(value: str) -> str:
    """An argparse type for --host: an address or name this machine can listen on, checked before
    anything is loaded or announced."""
    import socket

    try:
        socket.getaddrinfo(value, None, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise argparse.ArgumentTypeError(
            f"{printable(value)[:60]!r} is not an address or host name to listen on ({reason})"
        ) from None
    return value


def catalog_location(value: str) -> Path | MilvusLocation:
    """An argparse type for --catalog: a directory, or a Milvus URI (never taken for a folder;
    shown without its password wherever the command prints it)."""
    if not looks_like_uri(text(value)):
        return path(value)
    try:
        return location(value)
    except BadArgumentError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


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


def _catalog_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--catalog",
        required=True,
        type=catalog_location,
        metavar="DIR|URI",
        help="catalog directory, or milvus://[USER:PASSWORD@]HOST:PORT/COLLECTION "
        "(password also from FASHIONREC_MILVUS_TOKEN)",
    )


def _threads_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threads", type=positive, metavar="N", help="onnxruntime threads (default: all cores)"
    )


def _build_args(parser: argparse.ArgumentParser, embeds: bool = True) -> None:
    """The options of a command that builds a catalog; ``embeds=False`` (import: the vectors are
    ready) leaves out those of the model run, --batch-size and --threads."""
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
    if embeds:
        parser.add_argument(
            "--batch-size", type=positive, default=32, metavar="N", help="images per model run"
        )
        _threads_arg(parser)
    else:
        parser.set_defaults(batch_size=32, threads=None)
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
        "(256 suits a million images; see docs/scale.md)",
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


def _err(message: str) -> None:
    print(message, file=sys.stderr)


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def on_one_line(text: str) -> str:
    """``text`` for a line of the terminal: control characters as escapes (``\n``, ``\x1b``), so
    a key or value holding a newline or an escape sequence cannot forge a line or drive the
    terminal (a file named "a\n  1  0.9999  other.png" is a legal file name)."""
    return _CONTROL.sub(lambda match: repr(match.group())[1:-1], printable(text))


def _shorten(name: str | bytes | os.PathLike) -> str:
    """A name as it can be printed, cut when too long to read (a query of 5,000 characters)."""
    shown = on_one_line(os.fsdecode(name))
    return shown if len(shown) <= SHOWN_CHARS else f"{shown[:SHOWN_CHARS]}... ({len(shown)} characters)"


def _os_error(exc: OSError) -> str:
    """One line for a file system error: what failed, on which file."""
    if exc.filename is None:
        return printable(str(exc))
    return f"{exc.strerror or exc}: {_shorten(exc.filename)}"


def _open_for_indexing(args: argparse.Namespace):  # -> Catalog
    from ..catalog import Catalog
    from ..catalog.portable import copy_model_into

    if args.copy_model and args.model is None:
        raise CatalogError("--copy-model copies the --model given; pass --model FILE too.")
    model = copy_model_into(args.catalog, args.model) if args.copy_model else args.model
    catalog = Catalog.open_or_create(
        args.catalog,
        model,
        M=args.M,
        ef_construction=args.ef_construction,
        ef=args.ef,
        threads=args.threads,
        vector_dtype=args.vector_dtype,
        reduce_to=args.reduce,
    )
    field, current = args.product_field, catalog.product_field
    if field is not None and field != current:  # --product-field names the field: set or changed
        try:
            catalog.set_product_field(field)
        except BaseException:
            catalog.close()
            raise
        if current is not None or len(catalog):
            print(f"catalog {args.catalog}: product field is now {field!r} (was {current!r})")
    return catalog


def _print_index_report(report) -> int:  # report: IndexReport
    print(
        f"indexed {report.scanned} files in {report.seconds:.1f}s: {report.added} added, "
        f"{report.updated} updated, {report.unchanged} unchanged, {report.moved} moved, "
        f"{report.removed} removed, "
        f"{len(report.failures)} skipped"
    )
    for failure in report.failures:
        print(on_one_line(f"  skipped {failure.source}: {failure.reason}"))
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
    """`fashionrec index` (here because `import-fashion-mnist` ends with an index too)."""
    from ..feeds.scan import read_metadata, scan_folder

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
