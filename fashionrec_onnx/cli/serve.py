"""`fashionrec serve`: the HTTP JSON service, its grammar and its launch. FastAPI and uvicorn are
imported only when it runs (the serve extra)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from ..service.config import MAX_UPLOAD_PIXELS
from .common import _catalog_arg, host, path, positive, subcommand, text, whole_number


def _cmd_serve(args: argparse.Namespace) -> int:
    from ..catalog.location import TOKEN_VARIABLE, MilvusLocation
    from ..service.config import ServiceConfig
    from ..service.run import check, exposure_warning, serve, threads_per_worker

    if isinstance(args.catalog, MilvusLocation) and args.catalog.password:
        # The workers open the URI as shown (without the password): they inherit it from here.
        os.environ[TOKEN_VARIABLE] = args.catalog.token
    config = ServiceConfig(
        catalog=str(args.catalog),
        model=str(args.model) if args.model else None,
        api_key_env=args.api_key_env,
        max_upload_mb=args.max_upload_mb,
        max_upload_pixels=int(args.max_upload_megapixels * 1_000_000),
        expose_paths=args.expose_paths,
        threads=args.threads or threads_per_worker(args.workers),
    )
    items = check(config)
    warning = exposure_warning(args.host, config)
    if warning:
        print(warning, file=sys.stderr)
    workers = f"{args.workers} workers" if args.workers > 1 else "1 worker"
    print(
        f"serving {items} items of {args.catalog} on http://{args.host}:{args.port} ({workers}, "
        f"docs at /docs; Ctrl+C to stop)",
        flush=True,
    )
    serve(config, args.host, args.port, args.workers)
    return 0


def _upload_mb(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = 0.0
    if not 0.0 < number <= 1000.0:  # NaN fails here too
        raise argparse.ArgumentTypeError(f"must be a number of megabytes above 0, up to 1000, not {value!r}")
    return number


def _megapixels(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = 0.0
    if not 0.01 <= number <= 1000.0:  # NaN fails here too
        raise argparse.ArgumentTypeError(f"must be a number of megapixels from 0.01 to 1000, not {value!r}")
    return number


def add_commands(sub: argparse._SubParsersAction) -> None:
    parser = subcommand(
        sub,
        "serve",
        "serve a catalog over HTTP as a JSON search API",
        "POST /search takes a photo (multipart field `image`) or JSON with `key`, `keys` or\n"
        "`vector`; GET /items/KEY, /health, /metrics (Prometheus), OpenAPI docs at /docs. Each\n"
        "worker opens the catalog read-only and sees other processes' writes at once. Loopback\n"
        "only unless --host says otherwise. Needs the serve extra (FastAPI, uvicorn).",
        "  fashionrec serve --catalog ./catalog\n"
        "  API_KEY=secret fashionrec serve --catalog ./catalog --host 0.0.0.0 --workers 2 "
        "--api-key-env API_KEY",
    )
    _catalog_arg(parser)
    parser.add_argument(
        "--model", type=path, metavar="FILE", help="the catalog's model, when not where it was recorded"
    )
    parser.add_argument(
        "--host", type=host, default="127.0.0.1", help="address to listen on; 0.0.0.0 lets others in"
    )
    parser.add_argument("--port", type=whole_number(1, 65535), default=8000, metavar="N", help="port")
    parser.add_argument(
        "--workers", type=positive, default=1, metavar="N", help="worker processes (each loads the model)"
    )
    parser.add_argument(
        "--api-key-env",
        type=text,
        metavar="VAR",
        help="require the key held in environment variable VAR (X-API-Key or Authorization: Bearer)",
    )
    parser.add_argument(
        "--max-upload-mb", type=_upload_mb, default=10.0, metavar="MB", help="largest photo upload"
    )
    parser.add_argument(
        "--max-upload-megapixels",
        type=_megapixels,
        default=MAX_UPLOAD_PIXELS / 1e6,
        metavar="MP",
        help="largest photo the service decodes, in millions of pixels (read from its header first)",
    )
    parser.add_argument(
        "--expose-paths", action="store_true", help="include the server's image paths in answers"
    )
    parser.add_argument(
        "--threads",
        type=positive,
        metavar="N",
        help="onnxruntime threads per worker (default: cores / workers)",
    )


HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {"serve": _cmd_serve}
