"""`fashionrec demo`: the Gradio demo on a catalog (the demo extra)."""

from __future__ import annotations

import argparse
import logging

from ..errors import FashionrecError
from .common import (
    Handler,
    host,
    path,
    subcommand,
    whole_number,
)


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
        "--host", type=host, default="127.0.0.1", help="address to listen on; 0.0.0.0 lets other machines in"
    )
    demo.add_argument(
        "--port", type=whole_number(1, 65535), metavar="N", default=7860, help="port to serve on"
    )


def _cmd_demo(args: argparse.Namespace) -> int:
    try:
        from fashionrec_demo.app import banner_for, build_app, default_catalog, launch
    except ImportError as exc:
        raise FashionrecError(
            f"the demo needs gradio ({exc}); install with `pip install 'fashionrec-onnx[demo,export]'`."
        ) from exc
    from ..catalog import Catalog
    from ..service.run import check_listen, url_host

    # A port in use (another demo) is one line naming --port, before a first start's minutes of
    # export and indexing, not Gradio's advice about `launch()` arguments after "serving on".
    check_listen(args.host, args.port)
    # Gradio's start-up check of its own page logs each of its HTTP requests at INFO.
    logging.getLogger("httpx").setLevel(logging.WARNING)

    if args.catalog:
        catalog = Catalog.open(args.catalog, args.model, readonly=True)
        banner = banner_for(catalog)
    else:
        catalog, banner = default_catalog(args.home, args.model, args.retry_weights)
    products = catalog.product_count()
    size = f"{len(catalog)} photos" + (f" of {products} products" if products is not None else "")
    try:
        check_listen(args.host, args.port)  # still free after a first start's export and indexing
        # The address to open: the demo opens no browser itself (flushed: a pipe would hold it back).
        url = f"http://{url_host(args.host)}:{args.port}"
        print(f"serving {size} on {url} (open it in a browser; Ctrl+C to stop)", flush=True)
        launch(build_app(catalog, banner=banner), host=args.host, port=args.port)
    finally:
        catalog.close()
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register demo on the `fashionrec` parser."""
    _demo(sub)


HANDLERS: dict[str, Handler] = {
    "demo": _cmd_demo,
}
