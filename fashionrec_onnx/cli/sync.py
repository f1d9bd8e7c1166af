"""`fashionrec sync`: keep a catalog in step with a product feed. Its grammar and what it does."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

from ..errors import BadArgumentError
from .common import _build_args, _catalog_arg, on_one_line, path, positive, subcommand, text


def seconds(value: str) -> float:
    """An argparse type for a timeout: a positive number of seconds."""
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not number > 0 or number == float("inf"):
        raise argparse.ArgumentTypeError(f"{value!r} is not a positive number of seconds")
    return number


def _product_column(args: argparse.Namespace) -> str:
    """In a sync the product column is the product field: --product-column, --product-field (the
    option every catalog-building command takes) or product_id; two different names are refused."""
    if args.product_column and args.product_field and args.product_column != args.product_field:
        raise BadArgumentError(
            f"--product-column {args.product_column} and --product-field {args.product_field} disagree: "
            "a feed's product column becomes the catalog's product field; give one of them."
        )
    return args.product_column or args.product_field or "product_id"


def _cmd_sync(args: argparse.Namespace) -> int:
    from ..feeds.download import DownloadSettings
    from ..feeds.feed import read_feed
    from .common import _open_for_indexing

    column = _product_column(args)
    read_feed(args.feed, product_column=column, image_column=args.image_column)  # before creating
    settings = DownloadSettings(
        timeout=args.timeout, max_bytes=args.max_bytes, allow_private_network=args.allow_private_network
    )
    with _open_for_indexing(args) as catalog:
        report = catalog.sync(
            args.feed,
            images_root=args.images_root,
            product_column=column,
            image_column=args.image_column,
            key_prefix=args.key_prefix,
            batch_size=args.batch_size,
            download=settings,
            progress=not args.quiet and not args.json,
        )
        items = len(catalog)
    if args.json:
        print(json.dumps({**report.to_dict(), "items": items}, indent=2, ensure_ascii=False))
    else:
        print(
            f"synced {report.rows} feed rows in {report.seconds:.1f}s: {report.added} added, "
            f"{report.reembedded} re-embedded, {report.updated} updated, {report.removed} removed, "
            f"{report.unchanged} unchanged, {len(report.failed)} failed "
            f"({report.downloaded} downloaded, {report.not_modified} not modified)"
        )
        for failed in report.failed:
            print(on_one_line(f"  failed line {failed.line} ({failed.image or 'no image'}): {failed.reason}"))
        if report.failed:
            print("  the items of failed rows were left as they were; run sync again to retry them")
        print(f"catalog {args.catalog}: {items} items")
    return 1 if report.failed else 0


HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {"sync": _cmd_sync}


def add_commands(sub: argparse._SubParsersAction) -> None:
    parser = subcommand(
        sub,
        "sync",
        "keep a catalog in step with a product feed (CSV or JSON lines)",
        "FEED has one row per image: the product id (--product-column), the image (--image-column:\n"
        "a path relative to --images-root or the feed's folder, or an http(s) URL) and any other\n"
        "fields as metadata. Each image is stored under --key-prefix + the image as written. New\n"
        "images are added, changed ones re-embedded, changed fields rewritten in place, and items\n"
        "this feed added whose image left the feed removed (items indexed from folders are never\n"
        "touched). Local images must lie inside the images root. URL images are downloaded into\n"
        "CATALOG/feed-images (60 s per image in all) and asked for again only with If-None-Match /\n"
        "If-Modified-Since; URLs and redirects must lead to public addresses (--allow-private-network\n"
        "for a feed on a private network). A row that fails (missing file, outside the root, 404,\n"
        "timeout, too large, not an image) is listed, its item is left as it was, and the exit code\n"
        "is 1. Running it again changes nothing; a killed run finishes when run again. One sync of a\n"
        "catalog at a time: a second one is refused.",
        "  fashionrec sync products.csv --catalog ./catalog --model model.onnx\n"
        "  fashionrec sync feed.jsonl --catalog ./catalog --product-column sku --image-column url\n"
        "  fashionrec sync products.csv --catalog ./catalog --images-root /srv/photos --json",
    )
    parser.add_argument("feed", type=path, help="CSV (with a header row) or JSON lines file")
    _catalog_arg(parser)
    _build_args(parser)
    parser.add_argument(
        "--images-root",
        type=path,
        metavar="DIR",
        help="where relative image paths start (default: the feed's folder)",
    )
    parser.add_argument(
        "--product-column",
        type=text,
        metavar="NAME",
        help="the product id column, which becomes the catalog's product field (default: "
        "--product-field, else product_id)",
    )
    parser.add_argument("--image-column", type=text, default="image", metavar="NAME", help="the image column")
    parser.add_argument(
        "--key-prefix",
        type=text,
        default="feed/",
        metavar="PREFIX",
        help="the keys this feed owns (one prefix per feed); never empty",
    )
    parser.add_argument(
        "--timeout", type=seconds, default=10.0, metavar="SECONDS", help="how long a server may stay silent"
    )  # and 60 s per image in all (DownloadSettings.deadline)
    parser.add_argument(
        "--max-bytes", type=positive, default=32 * 1024 * 1024, metavar="N", help="largest image downloaded"
    )
    parser.add_argument(
        "--allow-private-network",
        action="store_true",
        help="let image URLs and their redirects reach loopback and private addresses (a feed on the "
        "shop's own network); link-local addresses (cloud metadata) stay refused",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
