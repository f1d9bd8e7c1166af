"""The `fashionrec` command: thin argument parsing over the library.

Library errors become one line on stderr with exit code 2; "ran but found a problem" is 1.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable

from .errors import FashionrecError

Handler = Callable[[argparse.Namespace], int]


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fashionrec", description="Visual product search for fashion.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_export(sub)
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
        print(f"error: {exc}", file=sys.stderr)  # noqa: T201 - the CLI's one place to talk
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)  # noqa: T201
        return 130


if __name__ == "__main__":
    sys.exit(main())
